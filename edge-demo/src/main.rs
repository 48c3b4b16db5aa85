//! `modula`: the command-line program. With no subcommand it runs the demo; `inspect`
//! prints a model file's metadata and tensor table; `train`, `eval`, `run` and `convert`;
//! `emoe`, `moduleformer` and `m2mkd` hold each method's own steps. Each subcommand family lives in its own file.

mod bench;
mod demo;
mod emoe;
mod inspect;
mod m2mkd;
mod moduleformer;
mod paths;
mod plan;
mod quantize;
mod run;
mod train;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "modula",
    version,
    about = "Train, quantise and run modular neural networks on CPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process; boxing the large `Train` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the built-in demo (the default when no subcommand is given): train a nested
    /// byte LM, quantise it, measure every nested size, pick one for a budget, generate.
    Demo(demo::DemoArgs),
    /// Train a model (text, kjv, fashion-mnist, listops, recall, copy) and write it as GGUF.
    Train(train::TrainArgs),
    /// Loss and accuracy of a model file on the validation split of a data set.
    Eval(train::EvalArgs),
    /// Convert a dense model between GGUF and safetensors (by the output's extension).
    Convert(train::ConvertArgs),
    /// Quantise a model file's weight matrices (q8_0, q4_0, f16, bf16), reporting errors.
    Quantize(quantize::QuantizeArgs),
    /// Generate text with a dense, EMoE, ModuleFormer or SeqBoat byte LM from its (possibly
    /// quantised) file.
    Run(run::RunArgs),
    /// The memory a run of a nested sub-model will use: weight prefixes + the engine's
    /// exact arena (dense, EMoE, ModuleFormer and SeqBoat files).
    Plan(plan::PlanArgs),
    /// Prefill and decode speed of every nested size at each precision on this device.
    Bench(bench::BenchArgs),
    /// ModuleFormer: extend with new experts, prune by usage, import MoLM checkpoints.
    #[command(subcommand)]
    Moduleformer(moduleformer::MfCommand),
    /// EMoE: split a trained dense model's FFNs into emergent experts.
    #[command(subcommand)]
    Emoe(emoe::EmoeCommand),
    /// m2mKD: distil a dense teacher into a modular (MoE) student module by module
    /// through a shallow meta model (phases meta, incubate, teacher, distill, assemble;
    /// `run` does the whole study).
    #[command(subcommand)]
    M2mkd(m2mkd::M2mCommand),
    /// Print a model file's architecture metadata and tensor table.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Also print every metadata entry, not only general.* and modula.*.
        #[arg(long)]
        all: bool,
    },
    /// Import a Hugging Face checkpoint directory (Llama, Mistral without a sliding window,
    /// Qwen2, GPT-2: config.json, model.safetensors or a sharded index, tokenizer.json) as a
    /// llama.cpp-layout GGUF file.
    Import {
        /// The checkpoint directory.
        #[arg(long)]
        hf: PathBuf,
        /// Output model (.gguf; written atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the token ids of a text under a model file's own tokenizer, as JSON
    /// (Modula's byte models: the bytes; llama.cpp files: their tokenizer.ggml.* BPE).
    Tokenize {
        /// Model file (.gguf): its tokenizer.ggml.* metadata.
        #[arg(
            long,
            required_unless_present = "tokenizer",
            conflicts_with = "tokenizer"
        )]
        model: Option<PathBuf>,
        /// A Hugging Face tokenizer.json instead of a model file (byte-level BPE or
        /// SentencePiece-style BPE with byte fallback).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The text (any bytes for a byte model; UTF-8 for a BPE tokenizer).
        #[arg(long)]
        text: std::ffi::OsString,
        /// Prepend the beginning-of-sequence token when the file asks for one (as a
        /// prompt is encoded).
        #[arg(long)]
        prompt: bool,
    },
}

/// `modula import --hf DIR --out M.gguf`.
fn import(dir: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    if out.extension().is_none_or(|e| e != "gguf") {
        return Err(format!(
            "--out {}: the output is a .gguf file",
            out.display()
        ));
    }
    paths::refuse_overwrite(("--out", out), &[("--hf", dir)])?;
    let w = modula_train::import::hf_to_gguf(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let n = w
        .write_to(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "wrote {} ({} tensors, {:.2} MiB)",
        out.display(),
        w.tensor_count(),
        n as f64 / 1048576.0
    );
    Ok(())
}

/// `modula tokenize`: the ids as one JSON object.
fn tokenize(
    model: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
    text: &[u8],
    prompt: bool,
) -> Result<(), String> {
    use modula_train::tokenizer::Tokenizer;
    let (path, tok) = match (model, json) {
        (Some(model), _) => {
            let at = |e: &dyn std::fmt::Display| format!("{}: {e}", model.display());
            let m = modula_core::Model::open(model).map_err(|e| at(&e))?;
            (model, Tokenizer::from_model(&m).map_err(|e| at(&e))?)
        }
        (None, Some(j)) => (
            j,
            Tokenizer::from_tokenizer_json(j, None, None).map_err(|e| e.to_string())?,
        ),
        (None, None) => return Err("--model or --tokenizer is required".into()),
    };
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let ids = tok.encode(text, prompt).map_err(|e| at(&e))?;
    println!("{}", serde_json::json!({ "ids": ids, "count": ids.len() }));
    Ok(())
}

/// `--threads N` of any subcommand: a count in `1..=MAX_THREADS` (0 keeps the default).
pub(crate) fn set_threads(n: usize) -> Result<(), String> {
    use modula_core::kernels::par::{self, MAX_THREADS};
    if n > MAX_THREADS {
        return Err(format!(
            "--threads {n}: at most {MAX_THREADS} (this machine has {} cores)",
            std::thread::available_parallelism().map_or(1, |c| c.get())
        ));
    }
    par::set_threads(n);
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly on a closed pipe, as Unix tools
    // do, instead of panicking inside println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    modula_train::tune_allocator();
    // a thread count in the environment that is not one is an error, not silently ignored
    if let Err(e) = modula_core::kernels::par::env_threads() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        None => demo::run(&demo::DemoArgs::default()),
        Some(Command::Demo(a)) => demo::run(&a),
        Some(Command::Inspect { file, all }) => inspect::run(&file, all),
        Some(Command::Train(a)) => train::run(&a),
        Some(Command::Eval(a)) => train::eval(&a),
        Some(Command::Convert(a)) => train::convert(&a),
        Some(Command::Quantize(a)) => quantize::run(&a),
        Some(Command::Emoe(c)) => emoe::run(&c),
        Some(Command::Moduleformer(c)) => moduleformer::run(&c),
        Some(Command::M2mkd(c)) => m2mkd::run(&c),
        Some(Command::Run(a)) => run::run(&a),
        Some(Command::Bench(a)) => bench::run(&a),
        Some(Command::Plan(a)) => plan::run(&a),
        Some(Command::Import { hf, out }) => import(&hf, &out),
        Some(Command::Tokenize {
            model,
            tokenizer,
            text,
            prompt,
        }) => tokenize(
            model.as_deref(),
            tokenizer.as_deref(),
            text.as_encoded_bytes(),
            prompt,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
