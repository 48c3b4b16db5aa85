//! Hostile files: the committed corpus (`corpus/hostile/`, manifest `EXPECTED`) must be
//! refused with the expected error kind, and random mutations of valid files must never
//! panic, hang or read out of bounds (every accepted mutant is fully walked).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use modula_core::Model;
use modula_tests::{hostile_cases, raw_valid, rich_valid_file, valid_cases, Rng};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/hostile")
}

fn manifest() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(corpus_dir().join("EXPECTED")).expect("corpus manifest");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            (
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_corpus_file_is_refused_with_its_expected_error() {
    let expected = manifest();
    let mut seen = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "EXPECTED" {
            continue;
        }
        let kind = expected
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in EXPECTED"));
        let bytes = std::fs::read(&path).unwrap();
        match Model::from_bytes(bytes.as_slice()) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => {
                assert_eq!(e.kind(), kind, "{name}: got {e}");
                assert!(!e.to_string().is_empty());
            }
        }
        // The std entry point (memory map) agrees.
        let via_open = Model::open(&path).map(|_| ()).unwrap_err();
        assert_eq!(via_open.kind(), kind, "{name} via Model::open");
        seen += 1;
    }
    assert_eq!(
        seen,
        expected.len(),
        "manifest lists files that are missing"
    );
    assert!(seen >= 40);
}

#[test]
fn committed_corpus_matches_its_generator() {
    let expected = manifest();
    for h in hostile_cases() {
        let on_disk = std::fs::read(corpus_dir().join(h.name))
            .unwrap_or_else(|_| panic!("{} missing: run make-hostile-corpus", h.name));
        assert!(
            on_disk == h.bytes,
            "{} is stale: run make-hostile-corpus",
            h.name
        );
        assert_eq!(expected.get(h.name).map(String::as_str), Some(h.kind));
    }
}

#[test]
fn valid_corpus_opens_and_matches_its_generator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/valid");
    for (name, bytes) in valid_cases() {
        let path = dir.join(name);
        let on_disk = std::fs::read(&path).unwrap_or_else(|_| panic!("{name} missing"));
        assert!(on_disk == bytes, "{name} is stale: run make-hostile-corpus");
        let m = Model::open(&path).unwrap();
        assert!(m.tensor_count() >= 2);
    }
}

#[test]
fn errors_name_the_culprit() {
    for h in hostile_cases() {
        let e = Model::from_bytes(h.bytes.as_slice()).unwrap_err();
        let msg = e.to_string();
        match h.kind {
            "TensorOverlap" => assert!(msg.contains("'a'") && msg.contains("'b'"), "{msg}"),
            "MisalignedOffset" | "TensorOutOfBounds" if h.name != "truncated_data.gguf" => {
                assert!(msg.contains("'b'"), "{}: {msg}", h.name)
            }
            "DuplicateKey" => assert!(msg.contains("general.architecture"), "{msg}"),
            "WrongMetadataType" => assert!(msg.contains("must be"), "{msg}"),
            _ => {}
        }
    }
}

/// Walk everything an accepted file offers (views may fail; they must not panic).
fn walk(bytes: &[u8]) {
    if let Ok(m) = Model::from_bytes(bytes) {
        for (k, v) in m.metadata() {
            let _ = format!("{k} {v}");
        }
        for t in m.tensors() {
            let _ = t.as_f32().map(|a| a.sum());
            let _ = t.as_f16().map(|a| a.len());
            let _ = t.as_bf16().map(|a| a.len());
            let _ = t.as_q8_0().map(|r| r.prefix_rows(r.rows).map(|b| b.len()));
            let _ = t.as_q4_0().map(|r| r.row(0).map(|b| b.len()));
            let _ = m.tensor(t.name()).unwrap();
        }
        for g in m.page_groups() {
            let _ = g.bytes().len();
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let seeds = [rich_valid_file(), raw_valid().build()];
    let interesting: [u64; 8] = [0, 1, 63, 64, 0xffff_ffff, 1 << 32, u64::MAX, u64::MAX / 2];
    let mut rng = Rng(2026);
    let mut accepted = 0;
    for round in 0..6000 {
        let mut f = seeds[round % 2].clone();
        for _ in 0..1 + rng.below(4) {
            let len = f.len() as u64;
            match rng.below(5) {
                0 => {
                    let i = rng.below(len) as usize;
                    f[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(len) as usize;
                    f[i] = rng.next_u64() as u8;
                }
                2 => f.truncate(rng.below(len) as usize),
                3 if len >= 8 => {
                    // Overwrite an 8-byte field (counts, lengths, dims, offsets) with an
                    // interesting value.
                    let i = rng.below(len - 7) as usize;
                    let v = interesting[rng.below(8) as usize];
                    f[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
                _ if len >= 4 => {
                    let i = rng.below(len - 3) as usize;
                    let v = interesting[rng.below(8) as usize] as u32;
                    f[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
                _ => {}
            }
            if f.is_empty() {
                break;
            }
        }
        if Model::from_bytes(f.as_slice()).is_ok() {
            accepted += 1;
        }
        walk(&f);
    }
    // Mutating tensor data leaves files valid, so some are accepted: the walk ran.
    assert!(accepted > 0);
}
