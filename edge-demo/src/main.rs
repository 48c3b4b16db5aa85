//! `modula`: the command-line program. With no subcommand it runs the demo; `inspect`
//! prints a model file's metadata and tensor table; `train`, `eval` and `convert` work on
//! the dense baseline. Each subcommand family lives in its own file.

mod demo;
mod inspect;
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
    /// Run the built-in demo (the default when no subcommand is given).
    Demo {
        /// Where to write the demo model file.
        #[arg(long, default_value = "modula-demo.gguf")]
        out: PathBuf,
    },
    /// Train a model (text, kjv, fashion-mnist, listops, recall, copy) and write it as GGUF.
    Train(train::TrainArgs),
    /// Loss and accuracy of a model file on the validation split of a data set.
    Eval(train::EvalArgs),
    /// Convert a dense model between GGUF and safetensors (by the output's extension).
    Convert(train::ConvertArgs),
    /// Print a model file's architecture metadata and tensor table.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Also print every metadata entry, not only general.* and modula.*.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    modula_train::tune_allocator();
    let result = match cli.command {
        None => demo::run(&PathBuf::from("modula-demo.gguf")),
        Some(Command::Demo { out }) => demo::run(&out),
        Some(Command::Inspect { file, all }) => inspect::run(&file, all),
        Some(Command::Train(a)) => train::run(&a),
        Some(Command::Eval(a)) => train::eval(&a),
        Some(Command::Convert(a)) => train::convert(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
