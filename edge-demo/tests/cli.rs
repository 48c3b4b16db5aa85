//! The `modula` binary as a user runs it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

fn modula() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modula"))
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("modula-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn demo_trains_quantises_measures_every_size_and_picks_one() {
    let d = tmpdir("demo");
    let tiny = |extra: &[&str]| {
        let mut c = modula();
        c.args(["demo", "--dir"]).arg(&d).args([
            "--steps",
            "4",
            "--batch",
            "2",
            "--d",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--ffn",
            "128",
            "--eval-windows",
            "2",
            "--tokens",
            "70",
            "--quiet",
        ]);
        c.args(extra);
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = tiny(&[]);
    assert!(ok, "{out}\n{err}");
    // 2 depths x 3 FFN widths, each measured
    for size in ["1x32", "1x64", "1x128", "2x32", "2x64", "2x128"] {
        assert!(out.contains(&format!(" {size} ")), "{size} missing:\n{out}");
    }
    assert!(out.contains("[6/6] picked sub-model"), "{out}");
    assert!(out.contains("latency budget"), "{out}");
    let csv = std::fs::read_to_string(d.join("sizes.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    for l in csv.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 14, "{l}");
        let bpb: f64 = f[6].parse().unwrap();
        let ms: f64 = f[9].parse().unwrap();
        assert!(bpb.is_finite() && bpb > 0.0 && bpb < 9.0 && ms > 0.0, "{l}");
        if cfg!(target_os = "linux") {
            let (start, peak): (u64, u64) = (f[12].parse().unwrap(), f[13].parse().unwrap());
            assert!(peak >= start && start > 0, "{l}");
        }
    }
    // nested sizes grow: parameters ascend with the FFN width at each depth
    let params: Vec<u64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(params[0] < params[1] && params[1] < params[2] && params[2] < params[5]);
    assert!(std::fs::read_to_string(d.join("sizes.svg"))
        .unwrap()
        .starts_with("<svg"));
    let out = modula()
        .arg("inspect")
        .arg(d.join("model-q8_0.gguf"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["modula.nested.depths", "modula.nested.ffn_widths", "q8_0"] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // modula bench: every size x precision, a CSV; bad settings are clear errors
    let bench = |extra: &[&str]| {
        let mut c = modula();
        c.args(["bench", "--model"]).arg(d.join("model-f32.gguf"));
        for (flag, v) in [("--rounds", "1"), ("--prompt", "3"), ("--tokens", "2")] {
            if !extra.contains(&flag) {
                c.args([flag, v]);
            }
        }
        let out = c.args(extra).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let csv_path = d.join("bench.csv");
    let (ok, out, err) = bench(&["--types", "file,q4_0", "--csv", csv_path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1 + 2 * 6, "{out}");
    assert!(out.contains("q4_0") && out.contains("2x128"), "{out}");
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 6, "{csv}");
    let (ok, out, err) = bench(&["--types", "q8_0", "--sizes", "1x32,2x128"]);
    assert!(ok && out.lines().count() == 3, "{out}{err}");
    for (args, needle) in [
        (&["--types", "q3_k"][..], "q3_k"),
        (&["--types", "file,file"][..], "twice"),
        (&["--sizes", "9x9"][..], "not a nested size"),
        (&["--sizes", "big"][..], "DEPTHxFFN"),
        (&["--tokens", "100"][..], "exceed the context"),
        (&["--context", "4"][..], "exceed the context"),
        (&["--rounds", "0"][..], "must be positive"),
    ] {
        let (ok, _, err) = bench(args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // modula plan: weights + the exact arena per size, checked against a built engine
    let plan = |extra: &[&str]| {
        let out = modula()
            .args(["plan", "--model"])
            .arg(d.join("model-q8_0.gguf"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = plan(&[]);
    assert!(ok && out.lines().count() == 2 + 6 + 1, "{out}{err}");
    assert!(out.contains("checked now"), "{out}");
    let (ok, out, err) = plan(&["--size", "1x32", "--context", "8"]);
    assert!(
        ok && out.contains("read from the mapped file"),
        "{out}{err}"
    );
    // KV cache of one block at 8 positions, d 32: 2 x 8 x 32 x 4 bytes
    assert!(out.contains(" 2048 "), "{out}");
    for (args, needle) in [
        (&["--size", "9x9"][..], "outside the model"),
        (&["--size", "big"][..], "DEPTHxFFN"),
        (&["--context", "0"][..], "context 0"),
        (&["--context", "65"][..], "position table"),
    ] {
        let (ok, out, err) = plan(args);
        assert!(
            !ok && err.contains(needle) && out.is_empty(),
            "{args:?}: {err}"
        );
    }
    // a memory budget picks by weights + arena; impossible budgets and bad settings fail
    let (ok, out, err) = tiny(&["--budget-mb", "100"]);
    assert!(ok && out.contains("picked sub-model 2x128"), "{out}\n{err}");
    let (ok, _, err) = tiny(&["--budget-mb", "0.001"]);
    assert!(!ok && err.contains("impossible budget"), "{err}");
    let (ok, _, err) = tiny(&["--budget-ms", "0.0000001"]);
    assert!(!ok && err.contains("impossible latency budget"), "{err}");
    for (flag, value, needle) in [
        ("--budget-ms", "-1", "--budget-ms must be a positive"),
        ("--quant", "q3_k", "q3_k"),
        ("--prompt", "", "--prompt must have"),
    ] {
        let (ok, _, err) = tiny(&[&format!("{flag}={value}")]);
        assert!(!ok && err.contains(needle), "{flag} {value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = modula()
        .args(["demo", "--ffn", "100", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("multiple of 128"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn inspect_fails_cleanly_on_bad_files() {
    let d = tmpdir("bad");
    let missing = modula()
        .arg("inspect")
        .arg(d.join("nope.gguf"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("error:") && err.contains("nope.gguf"), "{err}");
    assert!(!err.contains("panicked"));

    let bad = d.join("bad.gguf");
    std::fs::write(
        &bad,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    let out = modula().arg("inspect").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated") || err.contains("count"), "{err}");
    assert!(!err.contains("panicked"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn train_writes_a_model_that_inspect_reads_and_bad_data_is_refused() {
    let d = tmpdir("train");
    let text = d.join("t.txt");
    std::fs::write(&text, "hello modular world. ".repeat(60)).unwrap();
    let out = d.join("m.gguf");
    let r = modula()
        .args([
            "train", "--steps", "8", "--batch", "2", "--seq", "16", "--d", "16", "--layers", "1",
        ])
        .args(["--heads", "2", "--ffn", "32", "--threads", "1", "--data"])
        .arg(&text)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let so = String::from_utf8_lossy(&r.stdout);
    assert!(so.contains("bits per target"), "{so}");
    // metrics as JSON lines and the loss-curve picture next to the model
    let metrics = std::fs::read_to_string(d.join("m.gguf.metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        8
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("{\"step\":8,\"val_loss\"")),
        "{metrics}"
    );
    let svg = std::fs::read_to_string(d.join("m.gguf.loss.svg")).unwrap();
    assert!(svg.contains("<polyline"), "{svg}");
    // eval reads the model back; convert to safetensors and eval gives the same numbers
    let eval = |model: &std::path::Path| {
        let r = modula()
            .arg("eval")
            .arg("--model")
            .arg(model)
            .args(["--seq", "16", "--batches", "2", "--data"])
            .arg(&text)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let so = String::from_utf8_lossy(&r.stdout).to_string();
        so.lines()
            .find(|l| l.starts_with("validation"))
            .unwrap()
            .to_string()
    };
    let st = d.join("m.safetensors");
    let r = modula()
        .arg("convert")
        .arg("--in")
        .arg(&out)
        .arg("--out")
        .arg(&st)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(eval(&out), eval(&st));
    // the same windows scored by the decode engine: the same loss up to summation order
    let loss_of = |line: &str| -> f64 { line.split_whitespace().nth(2).unwrap().parse().unwrap() };
    let engine_eval = |model: &std::path::Path, extra: &[&str]| {
        let r = modula()
            .arg("eval")
            .arg("--model")
            .arg(model)
            .args(["--seq", "16", "--batches", "2", "--engine"])
            .args(extra)
            .arg("--data")
            .arg(&text)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let so = String::from_utf8_lossy(&r.stdout).to_string();
        assert!(so.contains("scored by the decode engine"), "{so}");
        so.lines()
            .find(|l| l.starts_with("validation"))
            .unwrap()
            .to_string()
    };
    let (plain, by_engine) = (eval(&out), engine_eval(&out, &[]));
    assert!(
        (loss_of(&plain) - loss_of(&by_engine)).abs() < 1e-3,
        "{plain} / {by_engine}"
    );
    let r = modula()
        .args(["eval", "--engine", "--seq", "16", "--model"])
        .arg(&st)
        .arg("--data")
        .arg(&text)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("--engine needs a GGUF"),
        "{err}"
    );
    // generate from the model file (and from a quantised copy below)
    let gen = |model: &std::path::Path| {
        let r = modula()
            .arg("run")
            .arg("--model")
            .arg(model)
            .args(["--prompt", "hello", "--tokens", "5", "--temperature", "0"])
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(String::from_utf8_lossy(&r.stderr).contains("tokens/s"));
        r.stdout
    };
    let g = gen(&out);
    assert!(g.starts_with(b"hello") && g.len() == 5 + 5 + 1, "{g:?}");
    assert_eq!(gen(&out), g, "greedy decoding is deterministic");
    // past the context the window slides (issue #32: the default --tokens 200 on a model
    // trained with a short --seq); a prompt longer than the context is refused
    let r = modula()
        .arg("run")
        .arg("--model")
        .arg(&out)
        .args(["--prompt", "hello", "--tokens", "100", "--temperature", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert_eq!(r.stdout.len(), 5 + 100 + 1, "{err}");
    assert!(
        err.contains("window slides") && err.contains("window slid"),
        "{err}"
    );
    for (args, needle) in [
        (
            vec![
                "--prompt",
                "a prompt that is much longer than sixteen bytes",
            ],
            "longer than the model's context",
        ),
        (vec!["--temperature=-1"], "--temperature"),
        (vec!["--prompt", ""], "must not be empty"),
    ] {
        let r = modula()
            .arg("run")
            .arg("--model")
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains(needle) && !err.contains("panicked"),
            "{err}"
        );
    }
    // quantise: every format evaluates; Q8_0 stays close to f32
    for t in ["q8_0", "q4_0", "f16", "bf16"] {
        let q = d.join(format!("m-{t}.gguf"));
        let r = modula()
            .args(["quantize", "--type", t, "--in"])
            .arg(&out)
            .arg("--out")
            .arg(&q)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let so = String::from_utf8_lossy(&r.stdout);
        assert!(so.contains("rel RMSE") && so.contains("smaller"), "{so}");
        assert!(eval(&q).starts_with("validation loss"));
        assert!(gen(&q).starts_with(b"hello"));
        // the engine's quantised arithmetic, with and without 8-bit activations, stays
        // close to the dequantised f32 evaluation
        let (plain, by_engine) = (eval(&q), engine_eval(&q, &[]));
        let exact_act = engine_eval(&q, &["--f32-activations"]);
        for l in [&by_engine, &exact_act] {
            assert!(
                (loss_of(&plain) - loss_of(l)).abs() < 0.02 * loss_of(&plain),
                "{t}: {plain} / {l}"
            );
        }
    }
    for (args, needle) in [
        (vec!["--type", "q5_k"], "unknown type"),
        (
            vec!["--type", "q8_0", "--in", "/nonexistent.gguf"],
            "/nonexistent.gguf",
        ),
    ] {
        let mut c = modula();
        c.arg("quantize").args(&args);
        if !args.contains(&"--in") {
            c.arg("--in").arg(&out);
        }
        let r = c.arg("--out").arg(d.join("q.gguf")).output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains(needle) && !err.contains("panicked"),
            "{err}"
        );
    }
    let r = modula().arg("inspect").arg(&out).output().unwrap();
    let so = String::from_utf8_lossy(&r.stdout);
    assert!(
        so.contains("\"dense\"") && so.contains("blk.0.attn_qkv.weight"),
        "{so}"
    );

    for (args, needle) in [
        (
            vec!["--data", "/nonexistent/x.txt"],
            "cannot read data file",
        ),
        (
            vec![
                "--arch",
                "seqboat",
                "--data",
                "listops",
                "--sb-attn",
                "cubic",
            ],
            "--sb-attn cubic",
        ),
        (
            vec!["--arch", "transformer-xl"],
            "use dense, moduleformer or seqboat",
        ),
        (vec!["--seq", "5000"], "fewer than one window"),
        (vec!["--data", "recall", "--seq", "7"], "even seq"),
        (
            vec!["--data", "fashion-mnist", "--data-dir", "/nonexistent"],
            "get-data.sh",
        ),
        (
            vec!["--data", "listops", "--seq", "16", "--listops-depth", "1"],
            "depth >= 2",
        ),
    ] {
        let mut c = modula();
        c.arg("train").args(&args);
        if !args.contains(&"--data") {
            c.arg("--data").arg(&text);
        }
        let r = c.arg("--out").arg(d.join("x.gguf")).output().unwrap();
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn emoe_convert_fine_tune_and_evaluate_with_and_without_the_mask() {
    let d = tmpdir("emoe");
    let text = d.join("t.txt");
    std::fs::write(
        &text,
        "emergent experts split a dense feed-forward layer. ".repeat(80),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let r = modula().args(args).output().unwrap();
        let (so, se) = (
            String::from_utf8_lossy(&r.stdout).to_string(),
            String::from_utf8_lossy(&r.stderr).to_string(),
        );
        (r.status.success(), so, se)
    };
    let p = |n: &str| d.join(n).to_string_lossy().to_string();
    let t = text.to_string_lossy().to_string();
    let (ok, _, se) = run(&[
        "train",
        "--data",
        &t,
        "--steps",
        "4",
        "--batch",
        "2",
        "--seq",
        "16",
        "--d",
        "16",
        "--layers",
        "2",
        "--heads",
        "2",
        "--ffn",
        "32",
        "--quiet",
        "--out",
        &p("dense.gguf"),
    ]);
    assert!(ok, "{se}");
    let (ok, so, se) = run(&[
        "emoe",
        "convert",
        "--in",
        &p("dense.gguf"),
        "--out",
        &p("emoe.gguf"),
        "--experts",
        "4",
        "--top-k",
        "2",
        "--restarts",
        "2",
    ]);
    assert!(
        ok && so.contains("4 experts of 8") && so.contains("50%"),
        "{so}{se}"
    );
    let (ok, so, se) = run(&[
        "train",
        "--init",
        &p("emoe.gguf"),
        "--data",
        &t,
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq",
        "16",
        "--quiet",
        "--out",
        &p("ft.gguf"),
    ]);
    assert!(
        ok && so.contains("EMoE: blocks [1], 4 experts, top-2, mask on"),
        "{so}{se}"
    );
    let ev = |mask: &str| {
        let (ok, so, se) = run(&[
            "eval",
            "--model",
            &p("ft.gguf"),
            "--data",
            &t,
            "--seq",
            "16",
            "--batches",
            "2",
            "--emoe-mask",
            mask,
        ]);
        assert!(ok, "{se}");
        so.lines()
            .find(|l| l.starts_with("validation"))
            .unwrap()
            .to_string()
    };
    assert_ne!(
        ev("on"),
        ev("off"),
        "the mask changes the function when k < N"
    );
    for (args, needle) in [
        (vec!["--experts", "5"], "divide"),
        (vec!["--top-k", "17"], "--top-k"),
        (vec!["--layers", "7"], "does not exist"),
    ] {
        let mut a = vec!["emoe", "convert", "--in"];
        let (i, o) = (p("dense.gguf"), p("x.gguf"));
        a.extend([i.as_str(), "--out", o.as_str()]);
        a.extend(args.iter().copied());
        let (ok, _, se) = run(&a);
        assert!(
            !ok && se.contains(needle) && !se.contains("panicked"),
            "{se}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn generated_tasks_train_from_the_command_line() {
    let d = tmpdir("tasks");
    for (task, seq, needle) in [
        ("listops", "32", "accuracy"),
        ("recall", "10", "bits per target"),
        ("copy", "12", "bits per target"),
    ] {
        let out = d.join(format!("{task}.gguf"));
        let r = modula()
            .args([
                "train", "--data", task, "--seq", seq, "--steps", "3", "--batch", "4",
            ])
            .args([
                "--d", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        let so = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "{task}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(so.contains(needle), "{task}: {so}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `modula train --device`: a bad name, and what gpu/auto do in this build (without the
/// `gpu` feature: gpu is refused with the rebuild command, auto trains on the CPU; with
/// it: no adapter falls back to the CPU saying why, an adapter takes the products).
#[test]
fn train_device_flag_selects_falls_back_and_refuses_cleanly() {
    let d = tmpdir("device");
    let out = d.join("m.gguf");
    let train = |device: &str, backend: Option<&str>| {
        let mut c = modula();
        // every product to the device, however small
        c.env("MODULA_GPU_MIN_MACS", "0");
        c.args(["train", "--data", "copy", "--seq", "12", "--steps", "2"])
            .args(["--batch", "4", "--d", "16", "--layers", "1", "--heads", "2"])
            .args(["--ffn", "32", "--quiet", "--device", device, "--out"])
            .arg(&out);
        if let Some(b) = backend {
            c.env("WGPU_BACKEND", b);
        }
        let r = c.output().unwrap();
        (
            r.status.success(),
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    let (ok, _, err) = train("tpu", None);
    assert!(!ok && err.contains("unknown device 'tpu'"), "{err}");
    #[cfg(not(feature = "gpu"))]
    {
        let (ok, _, err) = train("gpu", None);
        assert!(!ok && err.contains("--features gpu"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let (ok, so, err) = train("auto", None);
        assert!(ok, "{err}");
        assert!(
            so.contains("device: CPU (this build has no `gpu` feature)"),
            "{so}"
        );
    }
    #[cfg(feature = "gpu")]
    {
        // no adapter of this backend here (Metal is not built on Linux)
        let (ok, so, err) = train("gpu", Some("metal"));
        assert!(ok, "{err}");
        assert!(
            so.contains("no GPU adapter found") && so.contains("runs on the CPU"),
            "{so}"
        );
        if std::env::var("REQUIRE_GPU_ADAPTER").as_deref() == Ok("1") {
            let (ok, so, err) = train("gpu", None);
            assert!(ok, "{err}");
            assert!(
                so.contains("device: GPU") && so.contains(" products"),
                "{so}"
            );
            assert!(!so.contains(": 0 products"), "{so}");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--sorted-distill`: trains a nested model with in-place distillation; bad values and a
/// model without nested sizes are refused before training.
#[test]
fn nested_sizes_distillation_readahead_and_requests_from_a_file() {
    let d = tmpdir("distill");
    let out = d.join("m.gguf");
    let train = |extra: &[&str]| {
        let r = modula()
            .args(["train", "--data", "copy", "--seq", "12", "--steps", "3"])
            .args(["--batch", "4", "--d", "16", "--layers", "2", "--heads", "2"])
            .args(["--ffn", "32", "--quiet", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (
            r.status.success(),
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    let nested = ["--nested-depths", "1", "--sorted", "all"];
    let (ok, so, err) = train(&[&nested[..], &["--sorted-distill", "0.5:2"]].concat());
    assert!(ok, "{err}");
    assert!(
        so.contains("in-place distillation") && so.contains("tau 2"),
        "{so}"
    );
    for bad in ["0", "1.5", "0.5:0", "half"] {
        let (ok, _, err) = train(&[&nested[..], &["--sorted-distill", bad]].concat());
        assert!(!ok && err.contains("--sorted-distill"), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = train(&["--sorted-distill", "0.5"]);
    assert!(!ok && err.contains("needs a nested model"), "{err}");
    // a nested byte LM run at one size without read-ahead reads that sub-model's bytes
    // ahead (Model::submodel's ranges) and nothing else
    let lm = d.join("lm.gguf");
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let r = modula()
        .args([
            "train", "--data", readme, "--seq", "16", "--steps", "2", "--batch", "2",
        ])
        .args(["--d", "16", "--layers", "2", "--heads", "2", "--ffn", "64"])
        .args([
            "--nested-depths",
            "1",
            "--nested-ffn",
            "32",
            "--quiet",
            "--out",
        ])
        .arg(&lm)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = modula()
        .args(["run", "--model"])
        .arg(&lm)
        .args([
            "--size",
            "1x32",
            "--no-readahead",
            "--prompt",
            "ab",
            "--tokens",
            "3",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("read ahead: the sub-model's"), "{err}");
    // requests from a file, each at its own size, switched in place in one process
    let reqs = d.join("requests.txt");
    std::fs::write(&reqs, "@1x32 the old\nthe miller\n\n@2x64 and so\n").unwrap();
    let run_input = |extra: &[&str]| {
        let r = modula()
            .args(["run", "--model"])
            .arg(&lm)
            .arg("--input")
            .arg(&reqs)
            .args(["--tokens", "3", "--temperature", "0"])
            .args(extra)
            .output()
            .unwrap();
        (
            r.status.success(),
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    let (ok, so, err) = run_input(&["--size", "1x64"]);
    assert!(ok, "{err}");
    for want in [
        "request 1: sub-model 1x32 (switched in",
        "request 2: sub-model 1x64",
        "request 4: sub-model 2x64",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert_eq!(err.matches("prefill").count(), 3, "{err}");
    // each answer is its prompt and 3 generated bytes on a line of its own (a generated
    // byte may itself be a newline: the model is trained on README.md, which changes)
    let lines: Vec<&str> = so.lines().collect();
    let at = |p: &str| lines.iter().position(|l| l.starts_with(p));
    let (a, b, c) = (at("the old"), at("the miller"), at("and so"));
    assert!(
        a == Some(0) && a < b && b < c && lines.len() <= 3 + 9,
        "{so}"
    );
    std::fs::write(&reqs, "the old\n@7x7 nope\n").unwrap();
    let (ok, _, err) = run_input(&[]);
    assert!(
        !ok && err.contains("--input line 2") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::write(&reqs, "\n\n").unwrap();
    let (ok, _, err) = run_input(&[]);
    assert!(!ok && err.contains("no requests"), "{err}");
    let (ok, _, err) = run_input(&["--prompt", "x"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn resumed_training_writes_the_same_model_as_a_straight_run() {
    let d = tmpdir("resume");
    let text = d.join("t.txt");
    std::fs::write(&text, "checkpoints must resume exactly. ".repeat(40)).unwrap();
    let common = [
        "train",
        "--steps",
        "10",
        "--batch",
        "2",
        "--seq",
        "12",
        "--d",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--ffn",
        "16",
        "--threads",
        "1",
    ];
    let run = |extra: &[&str], out: &std::path::Path| {
        modula()
            .args(common)
            .args(extra)
            .arg("--data")
            .arg(&text)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let (straight, resumed) = (d.join("a.gguf"), d.join("b.gguf"));
    let ck = d.join("c.gguf");
    let ck = ck.to_str().unwrap();
    assert!(run(&[], &straight).status.success());
    assert!(run(
        &["--stop-after", "5", "--checkpoint", ck],
        &d.join("half.gguf")
    )
    .status
    .success());
    let r = run(&["--resume", ck], &resumed);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("resuming from"));
    let (a, b) = (
        std::fs::read(&straight).unwrap(),
        std::fs::read(&resumed).unwrap(),
    );
    assert!(
        a == b,
        "stop at 5 + resume to 10 must write the same model as 10 straight steps"
    );
    // a finished checkpoint cannot be resumed; a different --seq is refused
    assert!(run(&["--checkpoint", ck], &d.join("x.gguf"))
        .status
        .success());
    let r = run(&["--resume", ck], &d.join("y.gguf"));
    assert!(
        !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("already at step 10")
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// ModuleFormer through the command line: train, eval, run, extend, prune, quantize
/// (mixed), import a Hugging Face MoLM checkpoint; bad input is a clear error.
#[test]
fn moduleformer_commands_work_end_to_end() {
    let d = tmpdir("mf");
    let text = d.join("t.txt");
    std::fs::write(&text, "in the beginning was the word. ".repeat(300)).unwrap();
    let m = d.join("mf.gguf");
    let ok = |c: &mut Command| {
        let r = c.output().unwrap();
        assert!(
            r.status.success(),
            "{:?}: {}",
            c,
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).to_string() + &String::from_utf8_lossy(&r.stderr)
    };
    let common = [
        "--d",
        "32",
        "--layers",
        "2",
        "--experts",
        "4",
        "--ffn",
        "32",
        "--router-hidden",
        "32",
        "--seq",
        "16",
        "--batch",
        "2",
        "--steps",
        "3",
        "--quiet",
    ];
    let out = ok(modula()
        .args(["train", "--arch", "moduleformer", "--data"])
        .arg(&text)
        .args(common)
        .arg("--out")
        .arg(&m));
    assert!(
        out.contains("H(e)/lnE") && out.contains("moduleformer"),
        "{out}"
    );
    let out = ok(modula()
        .args(["eval", "--model"])
        .arg(&m)
        .arg("--data")
        .arg(&text)
        .args(["--seq", "16"]));
    assert!(
        out.contains("moduleformer") && out.contains("validation"),
        "{out}"
    );
    // expert paging under a memory budget: everything fits, about half fits, too little
    let page = |mb: &str| {
        modula()
            .args(["run", "--model"])
            .arg(&m)
            .args([
                "--prompt",
                "in the",
                "--tokens",
                "40",
                "--quiet",
                "--budget-mb",
                mb,
            ])
            .output()
            .unwrap()
    };
    let r = page("100");
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("expert paging:") && err.contains("evicted 0"),
        "{err}"
    );
    // "budget B MiB: S MiB shared weights + KV caches, up to X of T MiB of experts"
    let nums: Vec<f64> = err
        .lines()
        .find(|l| l.starts_with("budget "))
        .unwrap()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let (shared, total) = (nums[1], nums[3]);
    let half = format!("{:.4}", shared + total * 0.6);
    let r = page(&half);
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(r.status.success(), "{half}: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("expert paging:"))
        .unwrap();
    assert!(
        !line.contains("evicted 0;") && line.contains("misses"),
        "{line}"
    );
    let r = page("0.01");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("impossible budget") && !err.contains("panicked"),
        "{err}"
    );
    // nested experts: a model trained with --nested-experts evaluates every declared size
    let nm = d.join("nested.gguf");
    ok(modula()
        .args([
            "train",
            "--arch",
            "moduleformer",
            "--nested-experts",
            "2",
            "--data",
        ])
        .arg(&text)
        .args(common)
        .arg("--out")
        .arg(&nm));
    let out = ok(modula()
        .args(["eval", "--size", "all", "--model"])
        .arg(&nm)
        .arg("--data")
        .arg(&text)
        .args(["--seq", "16"]));
    assert!(
        out.contains("2 attention x 2 FFN experts") && out.contains("4 attention x 4 FFN experts"),
        "{out}"
    );
    let out = ok(modula()
        .args([
            "run",
            "--size",
            "2",
            "--tokens",
            "3",
            "--context",
            "64",
            "--model",
        ])
        .arg(&nm));
    assert!(out.contains("decode 3 tokens"), "{out}");
    // modula plan: each declared expert count's weights + the one engine's exact arena
    let out = ok(modula()
        .args(["plan", "--context", "64", "--model"])
        .arg(&nm));
    let row = |label: &str| -> Vec<u64> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("no {label} row: {out}"))
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let (two, four) = (row("2x2"), row("4x4"));
    assert!(two[0] < four[0], "fewer experts read fewer weights: {out}");
    // KV cache, work, gates, tables, arena (the last column, total, adds the weights)
    assert_eq!(
        two[1..6],
        four[1..6],
        "one arena for every expert count: {out}"
    );
    assert!(out.contains("checked now"), "{out}");
    let r = modula()
        .args(["plan", "--size", "5", "--model"])
        .arg(&nm)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("4 attention and 4 FFN experts"),
        "{err}"
    );
    let out = ok(modula().args(["run", "--model"]).arg(&m).args([
        "--prompt",
        "in the",
        "--tokens",
        "5",
        "--context",
        "64",
    ]));
    assert!(out.contains("decode 5 tokens"), "{out}");
    let ext = d.join("ext.gguf");
    let out = ok(modula()
        .args(["moduleformer", "extend", "--new-experts", "2", "--init"])
        .arg(&m)
        .arg("--data")
        .arg(&text)
        .args([
            "--seq", "16", "--batch", "2", "--steps", "2", "--quiet", "--out",
        ])
        .arg(&ext));
    assert!(out.contains("4 + 2 attention"), "{out}");
    let small = d.join("small.gguf");
    let out = ok(modula()
        .args(["moduleformer", "prune", "--in"])
        .arg(&ext)
        .arg("--data")
        .arg(&text)
        .args([
            "--seq",
            "16",
            "--batches",
            "2",
            "--keep-att",
            "3",
            "--keep-ffn",
            "2",
            "--out",
        ])
        .arg(&small));
    assert!(
        out.contains("kept 3 of 6 attention and 2 of 6 FFN"),
        "{out}"
    );
    let q = d.join("q.gguf");
    let out = ok(modula()
        .args(["quantize", "--type", "mixed", "--budget-mb", "1", "--calib"])
        .arg(&text)
        .args(["--calib-seq", "16", "--calib-batches", "2", "--in"])
        .arg(&m)
        .arg("--out")
        .arg(&q));
    assert!(out.contains("mixed plan"), "{out}");
    // sub-model usage: the nested file's expert counts, each routed on the calibration data
    let mix = |sizes: &str| {
        modula()
            .args(["quantize", "--type", "mixed", "--budget-mb", "1", "--calib"])
            .arg(&text)
            .args([
                "--calib-seq",
                "16",
                "--calib-batches",
                "2",
                "--sizes",
                sizes,
                "--in",
            ])
            .arg(&nm)
            .arg("--out")
            .arg(&q)
            .output()
            .unwrap()
    };
    let r = mix("2:3,4");
    let so = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        so.contains("at 2x2 experts (weight 3), 4x4 experts (weight 1)")
            && so.contains("mixed plan"),
        "{so}"
    );
    let r = mix("9");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("--sizes") && !err.contains("panicked"),
        "{err}"
    );
    let hf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/molm_parity/molm");
    let out = ok(modula()
        .args(["moduleformer", "import", "--hf"])
        .arg(&hf)
        .arg("--out")
        .arg(d.join("hf.gguf")));
    assert!(out.contains("K = V = ln_1(x)"), "{out}");
    // bad input: clear errors, no panic
    for (args, needle) in [
        (
            vec![
                "quantize",
                "--type",
                "mixed",
                "--budget-mb",
                "0.001",
                "--calib",
                "T",
                "--calib-seq",
                "16",
                "--in",
                "M",
                "--out",
                "X",
            ],
            "impossible budget",
        ),
        (
            vec![
                "moduleformer",
                "prune",
                "--in",
                "M",
                "--data",
                "T",
                "--seq",
                "16",
                "--keep-att",
                "1",
                "--keep-ffn",
                "2",
                "--out",
                "X",
            ],
            "top-k",
        ),
        (
            vec![
                "moduleformer",
                "import",
                "--hf",
                "/nonexistent",
                "--out",
                "X",
            ],
            "config.json",
        ),
        (
            vec![
                "train",
                "--arch",
                "moduleformer",
                "--data",
                "T",
                "--top-k",
                "9",
                "--out",
                "X",
            ],
            "top-k",
        ),
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "T" => text.display().to_string(),
                "M" => m.display().to_string(),
                "X" => d.join("x.gguf").display().to_string(),
                s => s.to_string(),
            })
            .collect();
        let r = modula().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn seqboat_trains_evaluates_resumes_and_streams() {
    let d = tmpdir("seqboat");
    let run = |args: &[&str]| {
        let out = modula().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // ListOps classifier (bidirectional, post-LN), then the act-bias sweep
    let lo = d.join("lo.gguf");
    let lo_s = lo.to_str().unwrap();
    let small = [
        "--d",
        "16",
        "--layers",
        "1",
        "--ndim",
        "4",
        "--zdim",
        "8",
        "--hdim",
        "16",
        "--batch",
        "4",
        "--steps",
        "6",
        "--quiet",
        "--threads",
        "1",
    ];
    let mut args = vec![
        "train", "--arch", "seqboat", "--data", "listops", "--seq", "32",
    ];
    args.extend(small);
    args.extend(["--window", "4", "--out", lo_s]);
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(
        out.contains("bidirectional") && out.contains("activation"),
        "{out}"
    );
    let metrics = std::fs::read_to_string(d.join("lo.gguf.metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"activation\":["), "{metrics}");
    let (ok, out, err) = run(&[
        "eval",
        "--model",
        lo_s,
        "--data",
        "listops",
        "--seq",
        "32",
        "--batch",
        "8",
        "--batches",
        "2",
        "--act-bias=-1,0,3",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("act-bias").count(), 3, "{out}");
    assert!(
        out.contains("act-bias -1:") && out.contains("span"),
        "{out}"
    );
    // a bidirectional classifier cannot stream
    let (ok, _, err) = run(&["run", "--model", lo_s]);
    assert!(!ok && err.contains("bidirectional"), "{err}");

    // causal byte LM on text with a checkpoint, resumed, then streamed by modula run
    let text = d.join("t.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(60),
    )
    .unwrap();
    let lm = d.join("lm.gguf");
    let ck = d.join("lm.ckpt");
    let mut args = vec![
        "train",
        "--arch",
        "seqboat",
        "--data",
        text.to_str().unwrap(),
    ];
    args.extend([
        "--seq",
        "24",
        "--window",
        "4",
        "--steps",
        "6",
        "--stop-after",
        "3",
    ]);
    args.extend(small.iter().filter(|a| **a != "--steps" && **a != "6"));
    args.extend([
        "--out",
        lm.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
    ]);
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(out.contains("causal"), "{out}");
    let mut resume = args.clone();
    resume.retain(|a| *a != "--stop-after" && *a != "3");
    resume.extend(["--resume", ck.to_str().unwrap()]);
    let (ok, out, err) = run(&resume);
    assert!(ok && out.contains("resuming"), "{out}{err}");
    let (ok, out, err) = run(&[
        "run",
        "--model",
        lm.to_str().unwrap(),
        "--prompt",
        "the quick",
        "--tokens",
        "30",
        "--act-bias",
        "0.5",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("the quick"), "{out}");
    assert!(
        err.contains("activation ratio per layer") && err.contains("bytes per stream"),
        "{err}"
    );
    // bad options are errors, not panics
    let (ok, _, err) = run(&["run", "--model", lm.to_str().unwrap(), "--context", "2"]);
    assert!(!ok && err.contains("constant state"), "{err}");
    let (ok, _, err) = run(&["run", "--model", lm.to_str().unwrap(), "--size", "2"]);
    assert!(!ok && err.contains("outside"), "{err}");
    let mut bad = vec![
        "train",
        "--arch",
        "seqboat",
        "--data",
        "listops",
        "--gate",
        "sometimes",
    ];
    let x = d.join("x.gguf");
    bad.extend(["--steps", "1", "--out", x.to_str().unwrap()]);
    let (ok, _, err) = run(&bad);
    assert!(!ok && err.contains("--gate"), "{err}");
    let (ok, _, err) = run(&[
        "train",
        "--arch",
        "seqboat",
        "--data",
        "listops",
        "--nested-experts",
        "1",
        "--steps",
        "1",
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("does not apply"), "{err}");
    // SortedNet depths: trained together, evaluated and streamed per depth
    let nd = d.join("nd.gguf");
    let mut args = vec![
        "train",
        "--arch",
        "seqboat",
        "--data",
        text.to_str().unwrap(),
    ];
    args.extend(["--seq", "24", "--window", "4", "--nested-depths", "1"]);
    args.extend(small.iter().map(|a| if *a == "1" { "2" } else { a }));
    args.extend(["--out", nd.to_str().unwrap()]);
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(out.contains("nested depths [1, 2]"), "{out}");
    let (ok, out, err) = run(&[
        "eval",
        "--model",
        nd.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--seq",
        "24",
        "--batches",
        "2",
        "--size",
        "all",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("depth 1,") && out.contains("depth 2,"),
        "{out}"
    );
    let (ok, _, err) = run(&[
        "run",
        "--model",
        nd.to_str().unwrap(),
        "--size",
        "1",
        "--prompt",
        "the",
        "--tokens",
        "5",
    ]);
    assert!(ok, "{err}");
    // modula plan: each depth's weights + the one engine's exact (constant) arena
    let (ok, out, err) = run(&["plan", "--model", nd.to_str().unwrap()]);
    assert!(ok, "{err}");
    let weights = |depth: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("depth {depth} ")))
            .unwrap_or_else(|| panic!("no depth {depth} row: {out}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert!(weights("1") < weights("2"), "{out}");
    assert!(out.contains("checked now"), "{out}");
    let (ok, _, err) = run(&["plan", "--model", nd.to_str().unwrap(), "--context", "8"]);
    assert!(!ok && err.contains("does not apply"), "{err}");
    // a latency budget picks a size from a calibration, cached next to the model
    let nds = nd.to_str().unwrap();
    let lat = |ms: &str, extra: &[&str]| {
        let mut v = vec!["run", "--model", nds, "--prompt", "the", "--tokens", "3"];
        v.extend(["--latency-ms", ms]);
        v.extend(extra);
        run(&v)
    };
    let (ok, _, err) = lat("1000", &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("measured") && err.contains("sub-model depth 2"),
        "{err}"
    );
    assert!(d.join("nd.gguf.latency.json").exists());
    let (ok, _, err) = lat("1000", &[]);
    assert!(ok && err.contains("cached"), "{err}");
    // --budget-ms is the same option
    let (ok, _, err) = run(&[
        "run",
        "--model",
        nds,
        "--prompt",
        "the",
        "--tokens",
        "3",
        "--budget-ms",
        "1000",
    ]);
    assert!(
        ok && err.contains("cached") && err.contains("sub-model depth 2"),
        "{err}"
    );
    let (ok, _, err) = lat("1000", &["--recalibrate"]);
    assert!(ok && err.contains("measured"), "{err}");
    let (ok, _, err) = lat("0.0000001", &[]);
    assert!(!ok && err.contains("impossible latency budget"), "{err}");
    let (ok, _, err) = lat("0", &[]);
    assert!(!ok && err.contains("positive"), "{err}");
    // sparse recall, local-window arm
    let sr = d.join("sr.gguf");
    let mut args = vec![
        "train",
        "--arch",
        "seqboat",
        "--data",
        "sparse-recall",
        "--seq",
        "64",
    ];
    args.extend(small);
    args.extend([
        "--gate",
        "always",
        "--window",
        "4",
        "--out",
        sr.to_str().unwrap(),
    ]);
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(
        out.contains("sparse recall") && out.contains("gate always"),
        "{out}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn m2mkd_phases_run_resume_and_refuse_bad_settings() {
    let d = tmpdir("m2mkd");
    let dir = d.join("run");
    let small = [
        "--data",
        "generated",
        "--patch",
        "2",
        "--train-images",
        "200",
        "--test-images",
        "60",
        "--modules",
        "2",
        "--teacher-width",
        "8",
        "--teacher-ffn",
        "16",
        "--student-width",
        "4",
        "--student-ffn",
        "8",
        "--experts",
        "3",
        "--heads",
        "2",
        "--steps-meta",
        "20",
        "--steps-incubate",
        "10",
        "--steps-teacher",
        "10",
        "--steps-distill",
        "10",
        "--steps-finetune",
        "10",
        "--batch",
        "16",
        "--eval-batches",
        "4",
    ];
    let run = |args: &[&str]| {
        // the small settings, less any the case sets itself
        let mut rest: Vec<&str> = Vec::new();
        for pair in small.chunks(2) {
            if !args.contains(&pair[0]) {
                rest.extend_from_slice(pair);
            }
        }
        let out = modula()
            .args(["m2mkd"])
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .args(rest)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, text, err) = run(&["teacher"]);
    assert!(ok, "{err}");
    assert!(text.contains("teacher_hybrids_mt"), "{text}");
    let (ok, _, err) = run(&["distill", "--variant", "m2mkd", "--seed", "3"]);
    assert!(ok, "{err}");
    assert!(dir.join("m2mkd.s3.k1.gguf").exists());
    let (ok, text, err) = run(&["assemble", "--variant", "m2mkd", "--seed", "3"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("m2mkd seed 3: test") && text.contains("assembled before A"),
        "{text}"
    );
    // the K files are reused: assembling again trains nothing new
    assert!(!err.contains("K (m2mkd)"), "{err}");
    let (ok, text, err) = run(&["run", "--variants", "scratch,m2mkd", "--seeds", "3"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("| m2mkd | 1 |") && text.contains("| scratch | 1 |"),
        "{text}"
    );
    assert!(dir.join("table.md").exists());
    // a phase file written by inspect-able GGUF
    let out = modula()
        .arg("inspect")
        .arg(dir.join("m2mkd.s3.gguf"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mod.1.blk.0.ffn_up.2.weight"));
    let student = dir.join("m2mkd.s3.gguf");
    let (ok, text, err) = run(&["eval", "--model", student.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        text.contains("test accuracy") && text.contains("shifted test"),
        "{text}"
    );
    let one = dir.join("m2mkd.s3.k0.gguf");
    let (ok, _, err) = run(&["eval", "--model", one.to_str().unwrap()]);
    assert!(!ok && err.contains("not a whole network"), "{err}");
    let (ok, _, err) = run(&["eval", "--model", student.to_str().unwrap(), "--patch", "4"]);
    assert!(!ok && err.contains("built for"), "{err}");

    // bad input: each a message and a non-zero exit, never a panic
    for (args, needle) in [
        (vec!["assemble", "--variant", "m2m"], "unknown variant"),
        (vec!["distill", "--variant", "scratch"], "no K phase"),
        (vec!["run", "--seeds", "6-1"], "--seeds"),
        (vec!["teacher", "--alpha", "1.5"], "--alpha"),
        (vec!["teacher", "--kl-norm", "sum"], "KL normalisation"),
        (vec!["teacher", "--ood", "x.txt"], "--ood"),
        (vec!["teacher", "--steps-meta", "0"], "at least 1 step"),
        (vec!["teacher", "--lr", "5e-3"], "other settings"),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = modula()
        .args(["m2mkd", "teacher", "--dir"])
        .arg(d.join("w"))
        .args(["--teacher-width", "10", "--heads", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of --heads"));
    // a trained dense baseline as the teacher: split, incubated, fine-tuned
    let dense = d.join("dense.gguf");
    let out = modula()
        .args([
            "train",
            "--data",
            "generated",
            "--patch",
            "2",
            "--d",
            "8",
            "--layers",
            "4",
        ])
        .args([
            "--heads", "2", "--ffn", "16", "--steps", "5", "--batch", "8", "--quiet",
        ])
        .arg("--out")
        .arg(&dense)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = modula()
        .args(["m2mkd", "teacher", "--dir"])
        .arg(d.join("from-dense"))
        .args(small)
        .arg("--teacher-init")
        .arg(&dense)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = modula()
        .args(["m2mkd", "teacher", "--dir"])
        .arg(d.join("from-dense-bad"))
        .args(small)
        .args(["--teacher-blocks", "1"])
        .arg("--teacher-init")
        .arg(&dense)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("teacher's shape"),
        "{err}"
    );
    // a damaged phase file is reported, not silently retrained
    std::fs::write(dir.join("meta.gguf"), b"GGUF\x03\x00").unwrap();
    let (ok, _, err) = run(&["assemble", "--variant", "incubation", "--seed", "4"]);
    assert!(!ok && err.contains("meta.gguf"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--nested-heads`: a dense model trained with nested head counts is written head-major;
/// `modula eval`, `run`, `plan` and `--budget-mb` take `DEPTHxFFNxHEADS` sizes; files that
/// do not nest heads and architectures without heads refuse them with a clear message.
#[test]
fn nested_heads_train_eval_run_plan_and_budget() {
    let d = tmpdir("heads");
    let lm = d.join("h.gguf");
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let out = |r: std::process::Output| {
        (
            r.status.success(),
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    let train = |extra: &[&str], file: &std::path::Path| {
        out(modula()
            .args(["train", "--data", readme, "--seq", "16", "--steps", "3"])
            .args(["--batch", "2", "--d", "32", "--layers", "2", "--heads", "4"])
            .args(["--ffn", "64", "--eval-every", "3", "--out"])
            .arg(file)
            .args(extra)
            .output()
            .unwrap())
    };
    let (ok, so, err) = train(&["--nested-heads", "1,2", "--nested-ffn", "32"], &lm);
    assert!(ok, "{err}");
    assert!(
        so.contains("heads [1, 2, 4] (6 sub-models)") && so.contains("2x32x1:"),
        "{so}"
    );
    let (ok, so, err) = out(modula()
        .args([
            "eval",
            "--data",
            readme,
            "--seq",
            "16",
            "--batches",
            "2",
            "--model",
        ])
        .arg(&lm)
        .args(["--size", "all"])
        .output()
        .unwrap());
    assert!(ok, "{err}");
    assert_eq!(so.matches("validation depth").count(), 6, "{so}");
    assert!(so.contains("FFN 32 x 1 heads"), "{so}");
    let (ok, so, err) = out(modula()
        .args(["plan", "--size", "all", "--context", "8", "--model"])
        .arg(&lm)
        .output()
        .unwrap());
    assert!(ok, "{err}");
    assert!(so.contains("2x32x1") && so.contains("2x64x2"), "{so}");
    let run = |extra: &[&str]| {
        out(modula()
            .args(["run", "--prompt", "ab", "--tokens", "3", "--model"])
            .arg(&lm)
            .args(extra)
            .output()
            .unwrap())
    };
    let (ok, _, err) = run(&["--size", "2x64x1"]);
    assert!(ok, "{err}");
    // mixed precision by sub-model usage: every declared size equally often reads 3/4 of
    // the FFN matrices on average and 7/12 of the attention ones, so the FFNs go first
    let q = d.join("q.gguf");
    let quant = |extra: &[&str]| {
        out(modula()
            .args(["quantize", "--type", "mixed", "--in"])
            .arg(&lm)
            .arg("--out")
            .arg(&q)
            .args(extra)
            .output()
            .unwrap())
    };
    let (ok, _, err) = quant(&["--budget-mb", "0.0001"]);
    assert!(!ok && err.contains("impossible budget"), "{err}");
    let cold: u64 = err
        .split(" MiB (")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    // room for one unit (Q8_0 costs 2,048 bytes more than Q4_0 for either unit here)
    let one = format!("{:.9}", (cold + 3000) as f64 / 1048576.0);
    let (ok, so, err) = quant(&["--budget-mb", &one]);
    assert!(ok, "{err}");
    assert!(
        so.contains("1 of 4 block units at q8_0")
            && so.contains(
                "in the order picked (share of the unit a token reads): blk.0 FFN (0.75)\n"
            ),
        "{so}"
    );
    let (ok, so, err) = out(modula().arg("inspect").arg(&q).output().unwrap());
    assert!(ok, "{err}");
    let ty = |t: &str| {
        so.lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    assert_eq!(ty("blk.0.ffn_up.weight").as_deref(), Some("q8_0"), "{so}");
    assert_eq!(
        ty("blk.0.ffn_down_t.weight").as_deref(),
        Some("q8_0"),
        "{so}"
    );
    assert_eq!(ty("blk.1.ffn_up.weight").as_deref(), Some("q4_0"), "{so}");
    assert_eq!(ty("blk.0.attn_qkv.weight").as_deref(), Some("q4_0"), "{so}");
    assert_eq!(ty("token_embd.weight").as_deref(), Some("q8_0"), "{so}");
    let (ok, _, err) = out(modula()
        .args([
            "run", "--prompt", "ab", "--tokens", "3", "--size", "2x32x1", "--model",
        ])
        .arg(&q)
        .output()
        .unwrap());
    assert!(ok, "{err}");
    // the control picks the least read first; a stated mix changes the ranking
    let (ok, so, err) = quant(&["--budget-mb", &one, "--hot-pick", "least-used"]);
    assert!(ok, "{err}");
    assert!(
        so.contains("picked (share of the unit a token reads): blk.0 attention (0.58)\n"),
        "{so}"
    );
    let (ok, so, err) = quant(&["--budget-mb", "1", "--sizes", "1x64x1:3,2x32x4"]);
    assert!(ok, "{err}");
    assert!(
        so.contains("4 of 4 block units")
            && so.contains("blk.0 FFN (0.88), blk.0 attention (0.44), blk.1 attention (0.25), blk.1 FFN (0.12)"),
        "{so}"
    );
    for (extra, needle) in [
        (&["--sizes", "3x64"][..], "2 blocks"),
        (&["--sizes", "2x64x3:0"][..], "not a positive number"),
        (&["--sizes", "2x64x5"][..], "4 heads"),
        (
            &["--calib", "kjv"][..],
            "calibration data is for ModuleFormer",
        ),
    ] {
        let (ok, _, err) = quant(&[&["--budget-mb", "1"][..], extra].concat());
        assert!(
            !ok && err.contains(needle) && !err.contains("panicked"),
            "{needle}: {err}"
        );
    }
    // the smallest budget that fits some sub-model picks one with fewer heads
    let (ok, _, err) = run(&["--budget-mb", "0.0001"]);
    assert!(!ok && err.contains("impossible budget"), "{err}");
    let (ok, _, err) = run(&["--size", "2x64x5"]);
    assert!(
        !ok && err.contains("outside") && !err.contains("panicked"),
        "{err}"
    );
    // a plain file runs all heads only; bad counts and architectures are refused
    let plain = d.join("p.gguf");
    let (ok, _, err) = train(&["--quiet"], &plain);
    assert!(ok, "{err}");
    let (ok, _, err) = out(modula()
        .args([
            "run", "--prompt", "ab", "--tokens", "2", "--size", "2x64x2", "--model",
        ])
        .arg(&plain)
        .output()
        .unwrap());
    assert!(!ok && err.contains("does not nest heads"), "{err}");
    let (ok, _, err) = out(modula()
        .args([
            "quantize",
            "--type",
            "mixed",
            "--budget-mb",
            "1",
            "--sizes",
            "2x64x2",
            "--in",
        ])
        .arg(&plain)
        .arg("--out")
        .arg(d.join("q2.gguf"))
        .output()
        .unwrap());
    assert!(!ok && err.contains("does not nest them"), "{err}");
    let (ok, _, err) = train(&["--nested-heads", "5"], &plain);
    assert!(!ok && err.contains("nested head count 5"), "{err}");
    let (ok, _, err) = train(&["--arch", "moduleformer", "--nested-heads", "1"], &plain);
    assert!(!ok && err.contains("--nested-experts"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
