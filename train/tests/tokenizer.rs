//! Modula's byte-level BPE against Hugging Face `tokenizers`: a tokenizer trained by the
//! library (`tests/reference/tokenizer_reference.py`), read from llama.cpp-style
//! `tokenizer.ggml.*` metadata, must give the library's ids on every case (Unicode, emoji,
//! digits, whitespace runs, special tokens, contractions) and decode them back to the text.
#![allow(clippy::unwrap_used)]

use modula_train::core::Model;
use modula_train::tokenizer::{StreamDecoder, Tokenizer};
use std::path::Path;

fn fixture() -> (Tokenizer, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer/bpe");
    let m = Model::open(dir.join("vocab.gguf")).unwrap();
    let t = Tokenizer::from_model(&m).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    (t, cases)
}

#[test]
fn bpe_ids_equal_the_tokenizers_library() {
    let (t, cases) = fixture();
    assert_eq!(t.vocab() as u64, cases["vocab"].as_u64().unwrap());
    let mut n = 0;
    for c in cases["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = t.encode(text.as_bytes(), false).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(
            String::from_utf8(t.decode(&got)).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        // one id at a time: never a split character, the same text in the end
        let mut s = StreamDecoder::default();
        let mut out = String::new();
        for &id in &got {
            out.push_str(&s.push(&t, id));
        }
        out.push_str(&s.finish());
        assert_eq!(out, c["decoded"].as_str().unwrap());
        n += 1;
    }
    assert!(n >= 20);
}

#[test]
fn bad_tokenizers_are_clear_errors() {
    let (t, _) = fixture();
    // not UTF-8: the BPE reads text
    let e = t.encode(b"\xff\xfe", false).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
    // a file from elsewhere without a tokenizer
    let m = Model::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/valid/minimal.gguf"),
    )
    .unwrap();
    let e = Tokenizer::from_model(&m).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");
}
