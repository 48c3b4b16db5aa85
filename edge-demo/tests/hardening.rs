//! Issue #32's reproductions, as a new user runs them: each is now a clear error with a
//! non-zero exit (and no file lost) or the right result.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn modula() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modula"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modula-hard-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A failed run: non-zero exit, stderr naming every `needles`.
fn refused(r: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "expected a failure; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

const TINY: [&str; 14] = [
    "--steps", "2", "--batch", "2", "--seq", "16", "--d", "16", "--layers", "1", "--heads", "2",
    "--ffn", "32",
];

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    modula()
        .arg("train")
        .args(TINY)
        .args(["--threads", "1", "--quiet", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn an_output_that_is_an_input_is_refused_everywhere() {
    let d = tmpdir("same");
    let text = d.join("data.txt");
    let body = "hello modular world. ".repeat(60);
    std::fs::write(&text, &body).unwrap();
    // train --out = --data (by name, through a relative path, a symlink and a hard link)
    refused(&train(&text, &text, &[]), &["--out", "--data", "destroy"]);
    refused(
        &train(&text, &d.join(".").join("data.txt"), &[]),
        &["--data"],
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&text, d.join("link.gguf")).unwrap();
        std::fs::hard_link(&text, d.join("hard.gguf")).unwrap();
        refused(&train(&text, &d.join("link.gguf"), &[]), &["--data"]);
        refused(&train(&text, &d.join("hard.gguf"), &[]), &["--data"]);
    }
    // the sidecars too: OUT.metrics.jsonl = --data
    let side = d.join("x.gguf.metrics.jsonl");
    std::fs::write(&side, &body).unwrap();
    refused(
        &train(&side, &d.join("x.gguf"), &[]),
        &["metrics", "--data"],
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        body,
        "the data survived"
    );
    assert_eq!(std::fs::read_to_string(&side).unwrap(), body);
    // a model to work on; --checkpoint = --out is refused too
    let m = d.join("m.gguf");
    let r = train(&text, &m, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ck = ["--checkpoint", m.to_str().unwrap()];
    refused(&train(&text, &m, &ck), &["--checkpoint", "--out"]);
    refused(
        &train(&text, &m, &["--init", m.to_str().unwrap()]),
        &["--out", "--init"],
    );
    let before = std::fs::read(&m).unwrap();
    // quantize, convert, emoe convert: --out = --in
    for args in [
        vec!["quantize", "--type", "q8_0", "--in"],
        vec!["convert", "--in"],
        vec!["emoe", "convert", "--experts", "4", "--top-k", "2", "--in"],
    ] {
        let r = modula()
            .args(&args)
            .arg(&m)
            .arg("--out")
            .arg(&m)
            .output()
            .unwrap();
        refused(&r, &["--out", "--in", "destroy"]);
    }
    assert_eq!(std::fs::read(&m).unwrap(), before, "the model survived");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn numeric_flags_are_checked_before_any_work() {
    let d = tmpdir("flags");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let out = d.join("m.gguf");
    for (flag, value) in [
        ("--lr", "-1"),
        ("--lr", "NaN"),
        ("--lr", "0"),
        ("--weight-decay", "NaN"),
        ("--weight-decay", "-0.1"),
        ("--aux-mi", "inf"),
        ("--emoe-noise", "-1"),
        ("--temp-scale", "0"),
        ("--eval-every", "0"),
    ] {
        let r = train(&text, &out, &[&format!("{flag}={value}")]);
        refused(&r, &[flag]);
        // refused before training: no model, no metrics written
        assert!(!out.exists(), "{flag} {value}: a model was written");
        assert!(!d.join("m.gguf.metrics.jsonl").exists(), "{flag} {value}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_quantised_file_is_not_quantised_again() {
    let d = tmpdir("requant");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    let r = modula()
        .arg("train")
        .args([
            "--steps", "2", "--batch", "2", "--seq", "16", "--d", "32", "--layers", "1",
        ])
        .args([
            "--heads",
            "2",
            "--ffn",
            "64",
            "--threads",
            "1",
            "--quiet",
            "--data",
        ])
        .arg(&text)
        .arg("--out")
        .arg(&m)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let q8 = d.join("q8.gguf");
    let r = modula()
        .args(["quantize", "--type", "q8_0", "--in"])
        .arg(&m)
        .arg("--out")
        .arg(&q8)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // q4_0 of the Q8_0 file: a clear error, no "1.00x smaller" copy
    let q4 = d.join("q4.gguf");
    let r = modula()
        .args(["quantize", "--type", "q4_0", "--in"])
        .arg(&q8)
        .arg("--out")
        .arg(&q4)
        .output()
        .unwrap();
    refused(&r, &["q8_0 already", "f32 original"]);
    assert!(!q4.exists());
    // bench refuses to label Q8_0 rows as q4_0
    let r = modula()
        .args([
            "bench",
            "--types",
            "file,q4_0",
            "--rounds",
            "1",
            "--tokens",
            "2",
        ])
        .args(["--prompt", "2", "--model"])
        .arg(&q8)
        .output()
        .unwrap();
    refused(&r, &["q8_0 already"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn messages_name_the_flag_at_fault() {
    let d = tmpdir("msgs");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    assert!(train(&text, &m, &[]).status.success());
    // emoe convert --experts 0 blamed --top-k
    let r = modula()
        .args(["emoe", "convert", "--experts", "0", "--in"])
        .arg(&m)
        .arg("--out")
        .arg(d.join("e.gguf"))
        .output()
        .unwrap();
    refused(&r, &["--experts 0"]);
    // train --arch moduleformer --experts 0 likewise
    let r = train(
        &text,
        &d.join("mf.gguf"),
        &["--arch", "moduleformer", "--experts", "0"],
    );
    refused(&r, &["0 experts"]);
    // demo --layers 0 blamed --ffn
    let r = modula()
        .args(["demo", "--layers", "0", "--dir"])
        .arg(d.join("demo"))
        .output()
        .unwrap();
    refused(&r, &["--layers 0"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!err.contains("--ffn"), "{err}");
    // a directory as the model: says so ("No such device" before)
    let r = modula().arg("run").arg("--model").arg(&d).output().unwrap();
    refused(&r, &["is a directory"]);
    // an output that cannot be written does not say "cannot open model file" (Linux: /proc
    // exists and takes no new files)
    #[cfg(target_os = "linux")]
    {
        let r = modula()
            .args(["quantize", "--type", "q8_0", "--in"])
            .arg(&m)
            .arg("--out")
            .arg("/proc/modula-q.gguf")
            .output()
            .unwrap();
        refused(&r, &["cannot write"]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!err.contains("cannot open model file"), "{err}");
    }
    // m2mkd run --patch 3 silently used 2x2 patches
    let r = modula()
        .args(["m2mkd", "run", "--patch", "3", "--dir"])
        .arg(d.join("m2m"))
        .output()
        .unwrap();
    refused(&r, &["--patch 3", "8x8"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_resumed_run_repeats_the_settings_the_checkpoint_recorded() {
    let d = tmpdir("resume");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let (m, ck) = (d.join("m.gguf"), d.join("ck.gguf"));
    let train = |_: &Path, out: &Path, extra: &[&str]| -> Output {
        let mut c = modula();
        c.args([
            "train", "--seq", "16", "--d", "16", "--layers", "1", "--heads", "2",
        ])
        .args(["--ffn", "32", "--threads", "1", "--quiet", "--data"])
        .arg(&text)
        .arg("--out")
        .arg(out)
        .args(extra);
        if !extra.contains(&"--batch") {
            c.args(["--batch", "2"]);
        }
        c.output().unwrap()
    };
    let ckf = ck.to_str().unwrap();
    let first = train(
        &text,
        &m,
        &["--steps", "4", "--checkpoint", ckf, "--stop-after", "2"],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // --lr, --batch and --steps changed: refused, naming each, before any work
    let r = train(
        &text,
        &m,
        &[
            "--steps", "6", "--resume", ckf, "--lr", "0.01", "--batch", "3",
        ],
    );
    refused(
        &r,
        &[
            "--lr",
            "--batch",
            "--steps 4 -> 6",
            "--allow-changed-settings",
        ],
    );
    // the same settings continue; changed ones only with the flag
    let r = train(
        &text,
        &m,
        &["--steps", "4", "--resume", ckf, "--checkpoint", ckf],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = train(
        &text,
        &m,
        &[
            "--steps",
            "6",
            "--resume",
            ckf,
            "--lr",
            "0.01",
            "--allow-changed-settings",
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn thread_counts_are_checked() {
    let d = tmpdir("threads");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    let r = modula()
        .arg("train")
        .args(TINY)
        .args(["--threads", "100000", "--data"])
        .arg(&text)
        .arg("--out")
        .arg(&m)
        .output()
        .unwrap();
    refused(&r, &["--threads 100000", "at most"]);
    for var in ["MODULA_THREADS", "RAYON_NUM_THREADS"] {
        let r = modula()
            .env(var, "abc")
            .args(["inspect"])
            .arg(&text)
            .output()
            .unwrap();
        refused(&r, &[var, "abc"]);
    }
    // the Modula name works (and wins over the old one)
    let r = modula()
        .env("MODULA_THREADS", "1")
        .env("RAYON_NUM_THREADS", "2")
        .arg("train")
        .args(TINY)
        .args(["--data"])
        .arg(&text)
        .arg("--out")
        .arg(&m)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && out.contains("1 threads"), "{out}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_work() {
    let d = tmpdir("late");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    assert!(train(&text, &m, &[]).status.success());
    let nowhere = d.join("no-such-dir").join("out.gguf");
    // train, emoe convert (k-means), bench (the whole benchmark) and quantize fail first
    refused(&train(&text, &nowhere, &[]), &["does not exist"]);
    assert!(!d.join("no-such-dir").exists());
    for args in [
        vec!["emoe", "convert", "--experts", "4", "--top-k", "2", "--in"],
        vec!["quantize", "--type", "q8_0", "--in"],
    ] {
        let r = modula()
            .args(&args)
            .arg(&m)
            .arg("--out")
            .arg(&nowhere)
            .output()
            .unwrap();
        refused(&r, &["does not exist"]);
    }
    let r = modula()
        .args(["bench", "--rounds", "1", "--model"])
        .arg(&m)
        .arg("--csv")
        .arg(d.join("no-such-dir").join("b.csv"))
        .output()
        .unwrap();
    refused(&r, &["--csv", "does not exist"]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("prefill"), "the benchmark ran first: {out}");
    // a directory as the output
    refused(&train(&text, &d, &[]), &["is a directory"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_failed_run_leaves_the_earlier_models_metrics() {
    let d = tmpdir("sidecars");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    assert!(train(&text, &m, &[]).status.success());
    let metrics = d.join("m.gguf.metrics.jsonl");
    let (model, old) = (std::fs::read(&m).unwrap(), std::fs::read(&metrics).unwrap());
    assert!(!d.join("m.gguf.metrics.jsonl.partial").exists());
    // a run that diverges fails after a step: the model and its metrics stay as they were
    let r = train(&text, &m, &["--lr", "1e30"]);
    refused(&r, &["NaN"]);
    assert_eq!(std::fs::read(&m).unwrap(), model);
    assert_eq!(std::fs::read(&metrics).unwrap(), old, "metrics overwritten");
    assert!(d.join("m.gguf.metrics.jsonl.partial").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn emoe_convert_refuses_a_nested_model_up_front() {
    let d = tmpdir("emoe-nested");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    let r = train(&text, &m, &["--nested-depths", "1", "--nested-ffn", "16"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = d.join("e.gguf");
    let r = modula()
        .args(["emoe", "convert", "--experts", "4", "--top-k", "2", "--in"])
        .arg(&m)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    refused(&r, &["nested", "SortedNet"]);
    assert!(!out.exists(), "no unreadable file is written");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn late_and_silent_choices_are_made_up_front() {
    let d = tmpdir("upfront");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    assert!(train(&text, &m, &[]).status.success());
    // convert: the output's extension decides the format; another is refused, nothing written
    let bin = d.join("x.bin");
    let r = modula()
        .args(["convert", "--in"])
        .arg(&m)
        .arg("--out")
        .arg(&bin)
        .output()
        .unwrap();
    refused(&r, &["--out", ".gguf or .safetensors"]);
    assert!(!bin.exists());
    // run: a prompt is bytes, UTF-8 or not
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let r = modula()
            .args(["run", "--tokens", "3", "--model"])
            .arg(&m)
            .arg("--prompt")
            .arg(std::ffi::OsStr::from_bytes(b"\xff\xfehello"))
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(r.stdout.starts_with(b"\xff\xfehello"), "{:?}", r.stdout);
    }
    // demo: an impossible memory budget fails before the training
    let start = std::time::Instant::now();
    let r = modula()
        .args(["demo", "--budget-mb", "0.00001", "--threads", "1", "--dir"])
        .arg(d.join("demo"))
        .output()
        .unwrap();
    refused(&r, &["--budget-mb", "impossible budget"]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!out.contains("[2/6]"), "trained before failing: {out}");
    assert!(
        !d.join("demo").join("model-f32.gguf").exists(),
        "nothing is written"
    );
    assert!(start.elapsed().as_secs() < 60);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eval_counts_and_contexts_of_zero_name_their_flag() {
    let d = tmpdir("zeros");
    let text = d.join("data.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let m = d.join("m.gguf");
    assert!(train(&text, &m, &[]).status.success());
    for flag in ["--batch", "--batches", "--seq"] {
        let r = modula()
            .args(["eval", "--model"])
            .arg(&m)
            .arg("--data")
            .arg(&text)
            .args([flag, "0"])
            .output()
            .unwrap();
        refused(&r, &[flag, "at least 1"]);
    }
    let r = modula()
        .args(["run", "--context", "0", "--model"])
        .arg(&m)
        .output()
        .unwrap();
    refused(&r, &["at least 1 position"]);
    std::fs::remove_dir_all(&d).unwrap();
}
