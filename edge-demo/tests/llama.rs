//! `modula` on Llama-family files end to end: the file's tokenizer encodes the prompt, the
//! engine decodes greedily, and the ids are those Hugging Face transformers generates from
//! the same text (`tests/reference/llama_reference.py`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/llama_parity")
        .join(name)
}

fn ids(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<u64> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u64)
        .collect()
}

#[test]
fn run_encodes_with_the_files_tokenizer_and_generates_transformers_greedy_ids() {
    for name in ["llama_gqa", "llama_tied_linear", "qwen2_bias"] {
        let bytes = std::fs::read(case(name).join("expect.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let r = Command::new(env!("CARGO_BIN_EXE_modula"))
            .args([
                "run",
                "--temperature",
                "0",
                "--tokens",
                "16",
                "--json",
                "--threads",
                "1",
            ])
            .args([
                "--prompt",
                "Once upon a time, the old miller's daughter",
                "--model",
            ])
            .arg(case(name).join("model.gguf"))
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let got = |k: &str| -> Vec<u64> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect()
        };
        assert_eq!(
            got("prompt_ids"),
            ids(&st, "prompt_ids"),
            "{name}: prompt ids"
        );
        assert_eq!(got("ids"), ids(&st, "prompt_greedy"), "{name}: greedy ids");
        assert!(v["text"].is_string());
        // tokenize prints the same prompt ids
        let t = Command::new(env!("CARGO_BIN_EXE_modula"))
            .args([
                "tokenize",
                "--prompt",
                "--text",
                "Once upon a time, the old miller's daughter",
                "--model",
            ])
            .arg(case(name).join("model.gguf"))
            .output()
            .unwrap();
        let tv: serde_json::Value = serde_json::from_slice(&t.stdout).unwrap();
        assert_eq!(tv["ids"], v["prompt_ids"], "{name}");
    }
}

#[test]
fn eval_with_the_files_tokenizer_gives_transformers_loss() {
    for name in ["llama_gqa", "llama_tied_linear", "qwen2_bias"] {
        let bytes = std::fs::read(case(name).join("expect.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let text = st.tensor("eval_text").unwrap().data().to_vec();
        let want = f64::from_le_bytes(st.tensor("eval_loss").unwrap().data().try_into().unwrap());
        let n = ids(&st, "eval_tokens")[0];
        let p = std::env::temp_dir().join(format!(
            "modula-llama-eval-{name}-{}.txt",
            std::process::id()
        ));
        std::fs::write(&p, &text).unwrap();
        let r = Command::new(env!("CARGO_BIN_EXE_modula"))
            .args(["eval", "--json", "--seq", "128", "--model"])
            .arg(case(name).join("model.gguf"))
            .arg("--data")
            .arg(&p)
            .output()
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let got = v["nll_per_token"].as_f64().unwrap();
        assert_eq!(v["tokens"].as_u64().unwrap(), n, "{name}");
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{name}: NLL {got} vs transformers {want}"
        );
        println!("{name}: NLL {got:.6} vs transformers {want:.6}");
    }
}
