//! Modula's byte-level BPE against Hugging Face `tokenizers`: tokenizers trained by the
//! library (`tests/reference/tokenizer_reference.py`) with GPT-2's, Llama 3's, Qwen2's and
//! SmolLM's pre-tokenizers, read from llama.cpp-style `tokenizer.ggml.*` metadata and from
//! the library's own `tokenizer.json`, must give the library's ids on every case (Unicode,
//! emoji, digits, whitespace runs and newlines, special tokens, contractions) and decode
//! them back to the text.
#![allow(clippy::unwrap_used)]

use modula_train::core::Model;
use modula_train::tokenizer::{BpeSpec, PreTokenizer, StreamDecoder, Tokenizer};
use std::path::Path;

const KINDS: [(&str, PreTokenizer); 4] = [
    ("bpe", PreTokenizer::Gpt2),
    ("bpe-llama3", PreTokenizer::Llama3),
    ("bpe-qwen2", PreTokenizer::Qwen2),
    ("bpe-smollm", PreTokenizer::SmolLm),
];

fn fixture() -> (Tokenizer, serde_json::Value) {
    fixture_of("bpe")
}

fn fixture_of(kind: &str) -> (Tokenizer, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tokenizer")
        .join(kind);
    let m = Model::open(dir.join("vocab.gguf")).unwrap();
    let t = Tokenizer::from_model(&m).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    (t, cases)
}

#[test]
fn bpe_ids_equal_the_tokenizers_library() {
    for (kind, pre) in KINDS {
        let (t, cases) = fixture_of(kind);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tokenizer")
            .join(kind);
        let m = Model::open(dir.join("vocab.gguf")).unwrap();
        assert_eq!(BpeSpec::from_model(&m).unwrap().pre, pre, "{kind}");
        check_cases(kind, &t, &cases);
        // the library's own file: the same vocabulary, the same ids
        let j = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), None, None).unwrap();
        check_cases(kind, &j, &cases);
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
                .unwrap();
        let from_json = BpeSpec::from_tokenizer_json(&spec).unwrap();
        let from_gguf = BpeSpec::from_model(&m).unwrap();
        assert_eq!(
            (&from_json.tokens, &from_json.merges, from_json.pre),
            (&from_gguf.tokens, &from_gguf.merges, from_gguf.pre),
            "{kind}"
        );
    }
}

fn check_cases(kind: &str, t: &Tokenizer, cases: &serde_json::Value) {
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
        assert_eq!(got, want, "{kind}: {text:?}");
        assert_eq!(
            String::from_utf8(t.decode(&got)).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        // one id at a time: never a split character, the same text in the end
        let mut s = StreamDecoder::default();
        let mut out = String::new();
        for &id in &got {
            out.push_str(&s.push(t, id));
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

#[test]
fn unknown_pre_tokenizers_and_tokenizer_kinds_are_named() {
    let e = PreTokenizer::from_name(Some("default")).unwrap_err();
    assert!(e.to_string().contains("\"default\""), "{e}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer/bpe-llama3");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    // another Split pattern than Llama 3's or Qwen2's
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+".into();
    let e = BpeSpec::from_tokenizer_json(&j).unwrap_err();
    assert!(e.to_string().contains("pre-tokenizer"), "{e}");
    j["model"]["type"] = "Unigram".into();
    let e = BpeSpec::from_tokenizer_json(&j).unwrap_err();
    assert!(e.to_string().contains("Unigram"), "{e}");
    let e = Tokenizer::from_tokenizer_json(&dir.join("missing.json"), None, None).unwrap_err();
    assert!(e.to_string().contains("missing.json"), "{e}");
}

/// SentencePiece-style BPE with byte fallback (Llama 2's kind): from llama.cpp-style
/// `tokenizer.ggml.*` (model `llama`, scores) and from the `tokenizers` library's own
/// `tokenizer.json`, the library's ids — and llama.cpp's, recorded when the fixture was made
/// (`tests/reference/spm_reference.py --peer`) — on every case, and decoded back.
#[test]
fn sentencepiece_ids_equal_the_tokenizers_library_and_llama_cpp() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer/spm");
    let m = Model::open(dir.join("vocab.gguf")).unwrap();
    let gguf = Tokenizer::from_model(&m).unwrap();
    assert!(matches!(gguf, Tokenizer::Spm(_)));
    let json =
        Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), Some(1), Some(2)).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut llamacpp = 0;
    for t in [&gguf, &json] {
        assert_eq!(t.vocab() as u64, cases["vocab"].as_u64().unwrap());
        for c in cases["cases"].as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            let ids = |k: &str| -> Option<Vec<u32>> {
                c[k].as_array()
                    .map(|a| a.iter().map(|v| v.as_u64().unwrap() as u32).collect())
            };
            let got = t.encode(text.as_bytes(), false).unwrap();
            assert_eq!(Some(&got), ids("ids").as_ref(), "{text:?}");
            if let Some(l) = ids("llamacpp_ids") {
                assert_eq!(got, l, "llama.cpp: {text:?}");
                llamacpp += 1;
            }
            assert_eq!(
                String::from_utf8_lossy(&t.decode(&got)),
                c["decoded"].as_str().unwrap(),
                "{text:?}"
            );
            // a prompt starts with bos
            assert_eq!(t.encode(text.as_bytes(), true).unwrap()[0], 1);
        }
    }
    assert!(
        llamacpp >= 40,
        "llama.cpp's ids were recorded for the cases"
    );
}

/// What Modula writes is what it reads: both kinds from `tokenizer.json` through
/// `tokenizer.ggml.*` give the same ids.
#[test]
fn tokenizers_written_as_gguf_metadata_read_back_the_same() {
    use modula_train::core::gguf::GgufWriter;
    use modula_train::tokenizer::SpmSpec;
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer");
    let text = "Once upon a time 😀, naïve: 12345 <s>x</s>  \n y";
    for kind in ["spm", "bpe", "bpe-llama3", "bpe-qwen2", "bpe-smollm"] {
        let p = base.join(kind).join("tokenizer.json");
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut w = GgufWriter::new();
        if kind == "spm" {
            let mut s = SpmSpec::from_tokenizer_json(&j).unwrap();
            s.bos = Some(1);
            s.add_bos = true;
            s.write(&mut w).unwrap();
        } else {
            BpeSpec::from_tokenizer_json(&j)
                .unwrap()
                .write(&mut w)
                .unwrap();
        }
        let m = Model::from_bytes(w.to_bytes().unwrap()).unwrap();
        let back = Tokenizer::from_model(&m).unwrap();
        let direct = Tokenizer::from_tokenizer_json(&p, Some(1), None).unwrap();
        assert_eq!(
            back.encode(text.as_bytes(), false).unwrap(),
            direct.encode(text.as_bytes(), false).unwrap(),
            "{kind}"
        );
    }
}
