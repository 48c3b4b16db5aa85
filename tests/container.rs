//! The container round trip: what Modula's writer writes, its reader reads back bit for bit,
//! with every alignment promise kept; and a file re-written from what was read is
//! byte-identical to the original.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use modula_core::gguf::{GgufWriter, MAX_TENSOR_NAME};
use modula_core::{GgufError, MetaValue, Model, Value, ValueType};
use modula_quant::DType;
use modula_tests::{rand_bytes, rich_valid_file, sanitize, Rng};
use proptest::prelude::*;

/// Rebuild a writer from a model: same metadata (minus writer-managed keys), same tensors,
/// same page groups.
fn rewrite<B: AsRef<[u8]>>(m: &Model<B>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_alignment(m.alignment() as u32).unwrap();
    if m.page_size() > 0 {
        w.set_page_size(m.page_size() as u32).unwrap();
    }
    for (k, v) in m.metadata() {
        if k == "general.alignment" || k.starts_with("modula.page_groups.") {
            continue;
        }
        w.set(k, v.to_owned_value()).unwrap();
    }
    let groups: Vec<_> = m.page_groups().collect();
    for (i, t) in m.tensors().enumerate() {
        if let Some(g) = groups
            .iter()
            .find(|g| g.tensor_indices().first() == Some(&i))
        {
            w.begin_group(g.name()).unwrap();
        }
        w.add_tensor(t.name(), t.dtype(), &t.shape(), t.bytes())
            .unwrap();
        if groups.iter().any(|g| g.tensor_indices().last() == Some(&i)) {
            w.end_group().unwrap();
        }
    }
    w.to_bytes().unwrap()
}

#[test]
fn rich_file_round_trips_bit_exactly() {
    let bytes = rich_valid_file();
    let m = Model::from_bytes(bytes.as_slice()).unwrap();
    assert_eq!(m.version(), 3);
    assert_eq!(m.alignment(), 64);
    assert_eq!(m.architecture(), Some("modula"));
    assert_eq!(m.get("test.u8"), Some(Value::U8(200)));
    assert_eq!(m.get("test.i64"), Some(Value::I64(i64::MIN)));
    assert_eq!(m.get("test.string").and_then(|v| v.as_str()), Some("héllo"));
    let strs = m.get("test.strings").and_then(|v| v.as_array()).unwrap();
    assert_eq!(strs.to_str_vec().unwrap(), vec!["a", "", "ccc"]);
    let nested = m.get("test.nested").and_then(|v| v.as_array()).unwrap();
    let inner: Vec<_> = nested
        .iter()
        .map(|v| v.as_array().unwrap().to_u64_vec().unwrap())
        .collect();
    assert_eq!(inner, vec![vec![1, 2], vec![]]);
    assert_eq!(m.get_u32("modula.block_count").unwrap(), 2);
    assert!(matches!(
        m.get_u32("test.i32"),
        Err(GgufError::WrongMetadataType { .. })
    ));
    assert!(matches!(
        m.get_u32("absent"),
        Err(GgufError::InvalidMetadataValue { .. })
    ));

    // Every tensor data offset honours the alignment; rewritten file is identical.
    for t in m.tensors() {
        assert_eq!(t.file_offset() % 64, 0, "{}", t.name());
        assert_eq!(
            (t.file_offset() - m.data_start()) as u64,
            t.info().data_offset()
        );
    }
    same_bytes(&rewrite(&m), &bytes);
}

#[test]
fn typed_views_borrow_the_buffer() {
    let bytes = rich_valid_file();
    let m = Model::from_bytes(bytes.as_slice()).unwrap();
    let emb = m.tensor("emb.weight").unwrap();
    let a = emb.as_f32().unwrap();
    assert_eq!(a.shape(), &[8, 16]);
    // zero copy: the view points into the file buffer
    let p = a.as_ptr() as usize;
    let base = bytes.as_ptr() as usize;
    assert_eq!(p - base, emb.file_offset());
    let raw = &bytes[emb.file_offset()..emb.file_offset() + 4];
    assert_eq!(a[[0, 0]], f32::from_le_bytes(raw.try_into().unwrap()));
    assert_eq!(
        a[[1, 0]].to_bits(),
        f32::from_le_bytes(bytes[emb.file_offset() + 64..][..4].try_into().unwrap()).to_bits()
    );

    assert_eq!(
        m.tensor("norm.weight").unwrap().as_f16().unwrap().shape(),
        &[16]
    );
    assert_eq!(
        m.tensor("x.bf16").unwrap().as_bf16().unwrap().shape(),
        &[2, 3, 4, 5]
    );
    let q8 = m.tensor("blk.0.up.weight").unwrap().as_q8_0().unwrap();
    assert_eq!((q8.rows, q8.blocks_per_row), (4, 2));
    assert_eq!(q8.prefix_rows(3).unwrap().len(), 6);
    assert!(q8.prefix_rows(5).is_none());
    assert!(q8.row(4).is_none());
    let q4 = m.tensor("blk.0.down.weight").unwrap().as_q4_0().unwrap();
    assert_eq!((q4.rows, q4.blocks_per_row, q4.blocks.len()), (4, 2, 8));

    // Wrong view type and missing tensors are errors, not panics.
    assert!(matches!(emb.as_f16(), Err(GgufError::DTypeMismatch { .. })));
    assert!(matches!(
        m.tensor("nope"),
        Err(GgufError::TensorNotFound { .. })
    ));
}

#[test]
fn misaligned_buffer_is_refused_not_copied() {
    let bytes = rich_valid_file();
    // Place the file at an odd address.
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let m = Model::from_bytes(&shifted[1..]).unwrap();
    let e = m.tensor("emb.weight").unwrap().as_f32().unwrap_err();
    assert_eq!(e.kind(), "MisalignedBuffer");
}

#[test]
fn page_groups_are_page_aligned_and_exclusive() {
    let bytes = rich_valid_file();
    let m = Model::from_bytes(bytes.as_slice()).unwrap();
    assert_eq!(m.page_size(), 16384);
    let g: Vec<_> = m.page_groups().collect();
    assert_eq!(g.len(), 1);
    let r = g[0].range();
    assert_eq!(r.start % 16384, 0);
    assert_eq!(r.len() % 16384, 0);
    let names: Vec<_> = g[0]
        .tensor_indices()
        .iter()
        .map(|&i| m.tensor_at(i).name())
        .collect();
    assert_eq!(names, ["blk.0.up.weight", "blk.0.down.weight"]);
    // Nothing else lives on the group's pages.
    for t in m.tensors() {
        let inside = r.contains(&t.file_offset());
        assert_eq!(inside, names.contains(&t.name()), "{}", t.name());
    }
    assert_eq!(
        m.group_of("blk.0.down.weight").unwrap().name(),
        "blk.0.expert.0"
    );
    assert!(m.group_of("emb.weight").is_none());
}

#[test]
fn custom_alignment_and_many_groups() {
    let data = vec![1u8; 100 * 4];
    let mut w = GgufWriter::new();
    w.set_alignment(256).unwrap();
    w.set_page_size(4096).unwrap();
    for e in 0..5 {
        w.begin_group(&format!("expert.{e}")).unwrap();
        w.add_tensor(&format!("e{e}.w1"), DType::F32, &[100], data.as_slice())
            .unwrap();
        w.add_tensor(&format!("e{e}.w2"), DType::F32, &[10, 10], data.as_slice())
            .unwrap();
        w.end_group().unwrap();
        w.add_tensor(&format!("loose{e}"), DType::F32, &[100], data.as_slice())
            .unwrap();
    }
    let bytes = w.to_bytes().unwrap();
    let m = Model::from_bytes(bytes.as_slice()).unwrap();
    assert_eq!(m.alignment(), 256);
    assert_eq!(m.get("general.alignment"), Some(Value::U32(256)));
    for t in m.tensors() {
        assert_eq!(t.file_offset() % 256, 0);
    }
    let groups: Vec<_> = m.page_groups().collect();
    assert_eq!(groups.len(), 5);
    let mut prev_end = 0;
    for g in &groups {
        assert_eq!(g.range().start % 4096, 0);
        assert_eq!(g.range().len(), 4096);
        assert!(g.range().start >= prev_end);
        prev_end = g.range().end;
        assert_eq!(g.tensor_indices().len(), 2);
    }
    same_bytes(&rewrite(&m), &bytes);
}

#[test]
fn empty_group_is_a_zero_length_range_on_a_page_boundary() {
    let mut w = GgufWriter::new();
    w.add_tensor("t", DType::F32, &[4], vec![0u8; 16]).unwrap();
    w.begin_group("empty").unwrap();
    w.end_group().unwrap();
    let bytes = w.to_bytes().unwrap();
    let m = Model::from_bytes(bytes.as_slice()).unwrap();
    let g = m.page_groups().next().unwrap();
    assert!(g.range().is_empty());
    assert_eq!(g.range().start % 16384, 0);
    assert!(g.tensor_indices().is_empty());
}

/// Compare two files, reporting the first differing byte instead of dumping both.
fn same_bytes(a: &[u8], b: &[u8]) {
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "files differ first at byte {i} (lengths {} and {})",
            a.len(),
            b.len()
        );
    }
    assert_eq!(a.len(), b.len(), "one file is a prefix of the other");
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("q", DType::Q8_0, &[2, 20], vec![0u8; 40])
        .unwrap_err();
    assert_eq!(e.kind(), "RowNotWholeBlocks");
    let e = w
        .add_tensor("f", DType::F32, &[3], vec![0u8; 11])
        .unwrap_err();
    assert_eq!(e.kind(), "InvalidInput");
    let e = w
        .add_tensor("f", DType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4])
        .unwrap_err();
    assert_eq!(e.kind(), "TooManyDims");
    let long = "x".repeat(MAX_TENSOR_NAME + 1);
    assert!(w.add_tensor(&long, DType::F32, &[1], vec![0u8; 4]).is_err());
    w.add_tensor("ok", DType::F32, &[1], vec![0u8; 4]).unwrap();
    assert_eq!(
        w.add_tensor("ok", DType::F32, &[1], vec![0u8; 4])
            .unwrap_err()
            .kind(),
        "DuplicateTensor"
    );
    assert_eq!(
        w.set("modula.block_count", MetaValue::U64(3))
            .unwrap_err()
            .kind(),
        "WrongMetadataType"
    );
    assert!(w.set("general.alignment", MetaValue::U32(32)).is_err());
    assert!(w
        .set("modula.page_groups.names", MetaValue::str_array(&["x"]))
        .is_err());
    assert!(w
        .set(
            "x",
            MetaValue::Array(ValueType::U32, vec![MetaValue::U8(1)])
        )
        .is_err());
    assert_eq!(w.set_alignment(48).unwrap_err().kind(), "BadAlignment");
    w.begin_group("g").unwrap();
    assert!(w.begin_group("h").is_err());
    assert!(
        w.to_bytes().is_err(),
        "an unterminated group must be refused"
    );
    w.end_group().unwrap();
    assert!(w.end_group().is_err());
    assert!(w.to_bytes().is_ok());
}

#[test]
fn open_from_disk_and_bad_paths() {
    let dir = std::env::temp_dir().join(format!("modula-container-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.gguf");
    let bytes = rich_valid_file();
    std::fs::write(&p, &bytes).unwrap();
    let m = Model::open(&p).unwrap();
    assert_eq!(m.bytes(), bytes.as_slice());
    // mmap base is page aligned, so typed views work
    assert_eq!(m.tensor("emb.weight").unwrap().as_f32().unwrap().len(), 128);

    let e = Model::open(dir.join("missing.gguf")).unwrap_err();
    assert_eq!(e.kind(), "Io");
    assert!(e.to_string().contains("missing.gguf"));
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(Model::open(&empty).unwrap_err().kind(), "Truncated");
    let e = Model::open(&dir).unwrap_err(); // a directory
    assert_eq!(e.kind(), "Io");

    // write_to is atomic and leaves no temporary files.
    let mut w = GgufWriter::new();
    w.add_tensor("t", DType::F32, &[4], vec![0u8; 16]).unwrap();
    let out = dir.join("w.gguf");
    w.write_to(&out).unwrap();
    assert!(Model::open(&out).is_ok());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
        "{names:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn arb_meta() -> impl Strategy<Value = MetaValue> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(MetaValue::U8),
        any::<i8>().prop_map(MetaValue::I8),
        any::<u16>().prop_map(MetaValue::U16),
        any::<i16>().prop_map(MetaValue::I16),
        any::<u32>().prop_map(MetaValue::U32),
        any::<i32>().prop_map(MetaValue::I32),
        any::<u64>().prop_map(MetaValue::U64),
        any::<i64>().prop_map(MetaValue::I64),
        (-1e30f32..1e30).prop_map(MetaValue::F32),
        (-1e300f64..1e300).prop_map(MetaValue::F64),
        any::<bool>().prop_map(MetaValue::Bool),
        ".{0,12}".prop_map(MetaValue::String),
    ];
    leaf.prop_recursive(2, 16, 6, |inner| {
        (inner.clone(), 0usize..5).prop_map(|(proto, n)| {
            let ty = proto.value_type();
            MetaValue::Array(ty, vec![proto; n])
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_files_round_trip(
        meta in proptest::collection::vec(("[a-z]{1,8}\\.[a-z]{1,8}", arb_meta()), 0..8),
        tensors in proptest::collection::vec((0usize..5, proptest::collection::vec(1usize..5, 0..4)), 0..8),
        seed in any::<u64>(),
        align_pow in 3u32..9,
    ) {
        let mut rng = Rng(seed);
        let mut w = GgufWriter::new();
        w.set_alignment(1 << align_pow).unwrap();
        let mut expected_meta = Vec::new();
        for (k, v) in &meta {
            let key = format!("t.{k}");
            if expected_meta.iter().any(|(ek, _): &(String, MetaValue)| ek == &key) { continue; }
            w.set(&key, v.clone()).unwrap();
            expected_meta.push((key, v.clone()));
        }
        let mut expected = Vec::new();
        for (i, (ti, shape)) in tensors.iter().enumerate() {
            let dt = DType::ALL[*ti];
            let mut shape = shape.clone();
            if let Some(last) = shape.last_mut() { *last *= dt.block_len(); } else if dt.is_quantized() { shape.push(dt.block_len()); }
            let n: usize = shape.iter().product();
            let bytes = sanitize(dt, rand_bytes(&mut rng, dt.bytes_for(n as u64).unwrap() as usize));
            let name = format!("t{i}");
            if i % 3 == 1 { w.begin_group(&format!("g{i}")).unwrap(); }
            w.add_tensor(&name, dt, &shape, bytes.clone()).unwrap();
            if i % 3 == 1 { w.end_group().unwrap(); }
            expected.push((name, dt, shape, bytes));
        }
        let file = w.to_bytes().unwrap();
        let m = Model::from_bytes(file.as_slice()).unwrap();
        for (k, v) in &expected_meta {
            let got = m.get(k).unwrap().to_owned_value();
            prop_assert_eq!(&got, v);
        }
        for (name, dt, shape, bytes) in &expected {
            let t = m.tensor(name).unwrap();
            prop_assert_eq!(t.dtype(), *dt);
            prop_assert_eq!(&t.shape(), shape);
            prop_assert!(t.bytes() == bytes.as_slice(), "tensor {} differs", name);
            prop_assert_eq!(t.file_offset() % (1 << align_pow), 0);
        }
        prop_assert!(rewrite(&m) == file, "re-written file differs");
    }
}

#[test]
fn every_known_key_is_documented_with_its_type() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/format.md")).unwrap();
    for spec in modula_core::gguf::schema::KNOWN_KEYS {
        let row = format!("| `{}` | {} |", spec.key, spec.ty.describe());
        assert!(doc.contains(&row), "docs/format.md lacks the row {row}");
    }
}
