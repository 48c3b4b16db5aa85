//! `modula` on Llama-family and GPT-2 files end to end: the file's tokenizer encodes the
//! prompt, the engine decodes greedily, and the ids are those Hugging Face transformers
//! generates from the same text (`tests/reference/{llama,gpt2}_reference.py`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const CASES: [&str; 6] = [
    "llama_gqa",
    "llama3_rope",
    "llama_tied_linear",
    "qwen2_bias",
    "gpt2_tied",
    "gpt2_untied",
];

fn case(name: &str) -> PathBuf {
    let set = if name.starts_with("gpt2") {
        "gpt2_parity"
    } else {
        "llama_parity"
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(set)
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
    for name in CASES {
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
    for name in CASES {
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
            .args(["eval", "--json", "--seq", "64", "--model"])
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

fn step_logits(m: &modula_core::Model<Vec<u8>>, ids: &[u32]) -> Vec<f32> {
    let mut e = modula_core::engine::open(m, Some(64), None).unwrap();
    let mut all = Vec::new();
    for &t in ids {
        all.extend_from_slice(e.step(t).unwrap());
    }
    all
}

#[test]
fn import_of_the_hugging_face_directory_gives_transformers_logits() {
    // qwen2_bias is stored in bf16 and its reference computed from the f32 weights; the
    // GPT-2 references are computed from the weights as stored
    for (name, tol) in [
        ("llama_gqa", 1e-4f32),
        ("llama3_rope", 1e-4),
        ("qwen2_bias", 3e-2),
        ("gpt2_tied", 1e-4),
        ("gpt2_untied", 1e-4),
    ] {
        let bytes = std::fs::read(case(name).join("expect.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want: Vec<f32> = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let input: Vec<u32> = ids(&st, "input_ids").iter().map(|&v| v as u32).collect();
        let out =
            std::env::temp_dir().join(format!("modula-import-{name}-{}.gguf", std::process::id()));
        let r = Command::new(env!("CARGO_BIN_EXE_modula"))
            .args(["import", "--hf"])
            .arg(case(name).join("hf"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let m = modula_core::Model::from_bytes(std::fs::read(&out).unwrap()).unwrap();
        // the tokenizer came along: the same ids as the fixture's GGUF (written by gguf-py)
        let tokenize = |model: &Path| {
            let t = Command::new(env!("CARGO_BIN_EXE_modula"))
                .args([
                    "tokenize",
                    "--text",
                    "Once upon a time, the miller's 3 daughters!",
                    "--model",
                ])
                .arg(model)
                .output()
                .unwrap();
            assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
            t.stdout
        };
        assert_eq!(
            tokenize(&out),
            tokenize(&case(name).join("model.gguf")),
            "{name}"
        );
        std::fs::remove_file(&out).unwrap();
        let got = step_logits(&m, &input);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
            / scale;
        println!("{name}: imported logits within {err:.2e} of transformers'");
        assert!(err <= tol, "{name}: {err}");
    }
    // a shard index naming a missing file, an unknown architecture: clear errors
    let dir = std::env::temp_dir().join(format!("modula-import-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = std::fs::read_to_string(case("qwen2_bias").join("hf/config.json")).unwrap();
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    std::fs::copy(
        case("qwen2_bias").join("hf/model.safetensors.index.json"),
        dir.join("model.safetensors.index.json"),
    )
    .unwrap();
    let run = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_modula"))
            .args(["import", "--hf"])
            .arg(dir)
            .arg("--out")
            .arg(dir.join("x.gguf"))
            .output()
            .unwrap()
    };
    let r = run(&dir);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("missing"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("Qwen2ForCausalLM", "FalconForCausalLM"),
    )
    .unwrap();
    let r = run(&dir);
    assert!(String::from_utf8_lossy(&r.stderr).contains("FalconForCausalLM"));
    assert!(!dir.join("x.gguf").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `modula run --chat`: the file's chat template rendered as transformers renders it
/// (`tests/reference/llama_reference.py`: a TinyLlama-style template with the bos, a system
/// message, `.strip()`), the same ids as the `tokenizers` library's, and transformers'
/// greedy continuation; a file without a template is a clear error.
#[test]
fn chat_applies_the_files_template() {
    let bytes = std::fs::read(case("llama_tied_linear").join("expect.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let chat = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_modula"))
            .args(["run", "--chat", "--system", "You are a miller.", "--json"])
            .args(["--temperature", "0", "--tokens", "12", "--threads", "1"])
            .args(["--prompt", "  What can your daughter spin?  ", "--model"])
            .arg(case(name).join("model.gguf"))
            .output()
            .unwrap()
    };
    let r = chat("llama_tied_linear");
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
        ids(&st, "chat_ids"),
        "the rendered prompt"
    );
    assert_eq!(got("ids"), ids(&st, "chat_greedy"));
    let r = chat("llama_gqa");
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("tokenizer.chat_template"), "{err}");
}

/// `modula tokenize --tokenizer tokenizer.json` gives the ids the model file's metadata gives.
#[test]
fn tokenize_reads_a_tokenizer_json_too() {
    let text = "Once upon a time, the miller's 3 daughters!";
    let run = |args: &[&std::ffi::OsStr]| {
        let r = Command::new(env!("CARGO_BIN_EXE_modula"))
            .arg("tokenize")
            .args(["--text", text])
            .args(args)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        r.stdout
    };
    for name in ["llama_gqa", "gpt2_tied"] {
        let j = case(name).join("hf/tokenizer.json");
        let m = case(name).join("model.gguf");
        assert_eq!(
            run(&["--tokenizer".as_ref(), j.as_os_str()]),
            run(&["--model".as_ref(), m.as_os_str()]),
            "{name}"
        );
    }
    let r = Command::new(env!("CARGO_BIN_EXE_modula"))
        .args(["tokenize", "--text", "x"])
        .output()
        .unwrap();
    assert!(!r.status.success(), "neither --model nor --tokenizer");
}
