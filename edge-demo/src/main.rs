//! `modula`: the command-line program. With no subcommand it runs the demo; `inspect`
//! prints a model file's metadata and tensor table. Each subcommand lives in its own file.

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
    /// Train a model on a text file and write it as a GGUF file.
    Train(train::TrainArgs),
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
    let result = match cli.command {
        None => demo::run(&PathBuf::from("modula-demo.gguf")),
        Some(Command::Demo { out }) => demo::run(&out),
        Some(Command::Inspect { file, all }) => inspect::run(&file, all),
        Some(Command::Train(a)) => train::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
