//! `modula bench`: prefill and decode speed of every nested size of a byte LM at each
//! precision on this device, as a table (and CSV). Quantised copies are written to a
//! temporary directory (removed afterwards) and mapped like any model file; the rounds are
//! interleaved over precisions and sizes, so a change in the machine's load hits all rows
//! alike; every figure is a median.

use clap::Args;
use modula_core::kernels::{isa, par};
use modula_core::quantize::{check_target_name, quantize_named};
use modula_core::Model;
use std::path::{Path, PathBuf};

use crate::run::{open_engine, timed_decode};
use modula_core::engine::Size;

/// Arguments of `modula bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model file (a byte LM: dense, EMoE, ModuleFormer or SeqBoat; or a Llama-family /
    /// GPT-2 GGUF).
    #[arg(long)]
    model: PathBuf,
    /// Precisions, comma-separated: `file` (the file as it is) and quantised copies of an
    /// f32/f16/bf16 file: f16, bf16, q8_0, q4_0, q4_k, q6_k, q4_k_m.
    #[arg(long, default_value = "file,f16,q8_0,q4_0")]
    types: String,
    /// Nested sizes: `all` (every size the file declares) or a comma-separated list
    /// (`DEPTHxFFN` dense, `N` or `ATTxFFN` experts ModuleFormer, a depth SeqBoat).
    #[arg(long, default_value = "all")]
    sizes: String,
    /// Prompt tokens per round (prefill).
    #[arg(long, default_value_t = 32)]
    prompt: usize,
    /// Decode steps per round.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Rounds (each: every precision x size, a fresh sequence).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Context capacity of dense and ModuleFormer engines (default: the position table,
    /// else 1024).
    #[arg(long)]
    context: Option<usize>,
    /// Threads for the kernels.
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the table here as CSV (atomically).
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// Removes the temporary directory of quantised copies, also on an early return.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run `modula bench`.
pub fn run(a: &BenchArgs) -> Result<(), String> {
    if let Some(csv) = &a.csv {
        crate::paths::refuse_overwrite(("--csv", csv), &[("--model", &a.model)])?;
    }
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    if a.prompt == 0 || a.tokens == 0 || a.rounds == 0 {
        return Err("--prompt, --tokens and --rounds must be positive".into());
    }
    let at = |p: &Path| {
        let p = p.display().to_string();
        move |e: String| format!("{p}: {e}")
    };
    let src = Model::open(&a.model).map_err(|e| format!("{}: {e}", a.model.display()))?;
    let types: Vec<&str> = a.types.split(',').map(str::trim).collect();
    if types.is_empty() || types.iter().any(|t| t.is_empty()) {
        return Err(format!("--types {}: a comma-separated list", a.types));
    }
    for (i, t) in types.iter().enumerate() {
        if types[..i].contains(t) {
            return Err(format!("--types: {t} is listed twice"));
        }
        if *t != "file" {
            check_target_name(t).map_err(|e| format!("{e} (or file)"))?;
        }
    }
    // quantised copies, mapped like any file
    let tmp = TempDir(std::env::temp_dir().join(format!("modula-bench-{}", std::process::id())));
    let mut paths = Vec::with_capacity(types.len());
    for &t in &types {
        if t == "file" {
            paths.push(a.model.clone());
            continue;
        }
        std::fs::create_dir_all(&tmp.0)
            .map_err(|e| format!("cannot create {}: {e}", tmp.0.display()))?;
        let (w, _) = quantize_named(&src, t)
            .map_err(|e| format!("{}: cannot make a {t} copy: {e}", a.model.display()))?;
        let p = tmp.0.join(format!("{t}.gguf"));
        w.write_to(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        paths.push(p);
    }
    let models = paths
        .iter()
        .map(|p| Model::open(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut engines = models
        .iter()
        .zip(&paths)
        .map(|(m, p)| open_engine(m, a.context).map_err(at(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let declared = engines[0].sizes();
    let sizes: Vec<Size> = if a.sizes == "all" {
        declared.clone()
    } else {
        a.sizes
            .split(',')
            .map(|s| {
                let size = engines[0].parse_size(s.trim())?;
                if declared.contains(&size) {
                    Ok(size)
                } else {
                    let list: Vec<String> = declared.iter().map(|d| d.label()).collect();
                    Err(format!(
                        "--sizes: {} is not a nested size of this file (declared: {})",
                        s.trim(),
                        list.join(", ")
                    ))
                }
            })
            .collect::<Result<_, String>>()?
    };
    let ctx = engines[0].max_context().unwrap_or(usize::MAX);
    if a.prompt + a.tokens > ctx {
        return Err(format!(
            "--prompt {} + --tokens {} exceed the context of {ctx} positions",
            a.prompt, a.tokens
        ));
    }
    let vocab = engines[0].vocab();
    let prompt: Vec<u32> = (0..a.prompt)
        .map(|i| ((i * 7 + 3) % vocab) as u32)
        .collect();
    eprintln!(
        "bench: {} sizes x {} precisions, {} rounds of {} prompt + {} decode tokens; {} threads, {}",
        sizes.len(),
        types.len(),
        a.rounds,
        a.prompt,
        a.tokens,
        par::threads(),
        isa::label(isa::active())
    );
    let (nt, ns) = (types.len(), sizes.len());
    let mut prefill = vec![Vec::with_capacity(a.rounds); nt * ns];
    let mut steps = vec![Vec::with_capacity(a.rounds * a.tokens); nt * ns];
    for _ in 0..a.rounds {
        for (k, e) in engines.iter_mut().enumerate() {
            for (j, &size) in sizes.iter().enumerate() {
                let (pf, steps_ms) = timed_decode(e.as_mut(), size, &prompt, a.tokens)?;
                prefill[k * ns + j].push(pf);
                steps[k * ns + j].extend(steps_ms);
            }
        }
    }
    let header = format!(
        "{:<7} {:>18} {:>9} {:>14} {:>12} {:>12} {:>10}",
        "type",
        "size",
        "file MiB",
        "prefill tok/s",
        "decode ms",
        "decode tok/s",
        format!("vs {}", types[0])
    );
    println!("{header}");
    let mut csv = String::from(
        "type,size,file_bytes,prefill_tokens_per_s,decode_ms_per_token,decode_tokens_per_s,decode_speed_vs_first_type\n",
    );
    let mut base = vec![0.0f64; ns];
    for (k, t) in types.iter().enumerate() {
        let bytes = std::fs::metadata(&paths[k]).map_or(0, |m| m.len());
        for (j, size) in sizes.iter().enumerate() {
            let ms = median(&mut steps[k * ns + j]);
            let pf = a.prompt as f64 / median(&mut prefill[k * ns + j]).max(1e-12);
            if k == 0 {
                base[j] = ms;
            }
            let ratio = base[j] / ms;
            println!(
                "{:<7} {:>18} {:>9.2} {:>14.0} {:>12.4} {:>12.0} {:>9.2}x",
                t,
                size.label(),
                bytes as f64 / 1048576.0,
                pf,
                ms,
                1e3 / ms,
                ratio
            );
            csv.push_str(&format!(
                "{t},{},{bytes},{pf:.1},{ms:.5},{:.1},{ratio:.4}\n",
                size.label(),
                1e3 / ms
            ));
        }
    }
    if let Some(p) = &a.csv {
        modula_core::io::atomic_write(p, |w| w.write_all(csv.as_bytes()))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}
