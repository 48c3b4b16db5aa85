//! Print a model's logits at every position of a token sequence as JSON — one decode step
//! per token, with the KV cache, as `modula run` computes them — for comparisons with other
//! runtimes (scripts/llamacpp/kquant_interop.py runs llama.cpp's `peer logits` on the same
//! ids).
//!
//!     cargo run --release -p edge-demo --example logits -- MODEL.gguf 1,2,3 [--f32-activations]
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(ids)) = (args.first(), args.get(1)) else {
        eprintln!("usage: logits MODEL.gguf ID,ID,... [--f32-activations]");
        return ExitCode::from(2);
    };
    if args.iter().any(|a| a == "--f32-activations") {
        modula_core::kernels::linear::set_quantized_activations(false);
    }
    let run = || -> Result<String, String> {
        let ids = ids
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("id '{s}': {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let m = modula_core::Model::open(path).map_err(|e| format!("{path}: {e}"))?;
        let mut e = modula_core::engine::open(&m, Some(ids.len().max(1)), None)
            .map_err(|e| format!("{path}: {e}"))?;
        let mut rows = Vec::with_capacity(ids.len());
        for &t in &ids {
            let l = e.step(t).map_err(|e| e.to_string())?;
            let row: Vec<String> = l.iter().map(|v| format!("{v:e}")).collect();
            rows.push(format!("[{}]", row.join(",")));
        }
        Ok(format!("{{\"logits\":[{}]}}", rows.join(",")))
    };
    match run() {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
