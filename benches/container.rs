//! Opening a model: validating the header of a file with many tensors, against the
//! baseline of merely scanning the same bytes (a checksum), measured in the same run.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use modula_benches::synthetic_file;
use modula_core::Model;
use std::hint::black_box;

fn open(c: &mut Criterion) {
    let bytes = synthetic_file(1000, 64);
    let header_len = Model::from_bytes(bytes.as_slice())
        .expect("valid")
        .data_start();
    let mut g = c.benchmark_group("container_open_1000_tensors");
    g.throughput(Throughput::Bytes(header_len as u64));
    g.bench_function("baseline_checksum_header_bytes", |b| {
        b.iter(|| {
            black_box(&bytes[..header_len])
                .iter()
                .fold(0u64, |a, &x| a.wrapping_add(x.into()))
        })
    });
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| Model::from_bytes(black_box(bytes.as_slice())).map(|m| m.tensor_count()))
    });
    g.bench_function("lookup_by_name", |b| {
        let m = Model::from_bytes(bytes.as_slice()).expect("valid");
        b.iter(|| m.tensor(black_box("t.517.weight")).map(|t| t.bytes().len()))
    });
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
