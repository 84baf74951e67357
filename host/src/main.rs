//! `tinystate`: run, inspect and serve tiny-state language models.

mod cli_run;
mod model_file;
mod nn;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The model used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "models/default-q8_0.gguf";

#[derive(Parser)]
#[command(name = "tinystate", version, about = "Tiny-state language models (Mamba) from GGUF files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (or token ids), streaming it, then print speeds.
    Run(cli_run::RunArgs),
    /// Print the last position's logits for a list of token ids, as JSON.
    Logits(cli_run::LogitsArgs),
    /// Print a model file's metadata and tensors.
    Info(ModelArgs),
    /// Measure prefill and decode tokens/s (one JSON line), as the llama.cpp peer script does.
    Bench(cli_run::BenchArgs),
    /// Serve the wasm guest over HTTP (OpenAI-compatible API), one fresh instance per request.
    Serve(serve::ServeArgs),
}

/// Which model file to load, and how many threads to compute with.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// GGUF model file.
    #[arg(short, long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Threads for matrix products (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Run(a) => cli_run::run(&a).map_err(Into::into),
        Command::Logits(a) => cli_run::logits(&a).map_err(Into::into),
        Command::Info(a) => cli_run::info(&a).map_err(Into::into),
        Command::Bench(a) => cli_run::bench(&a).map_err(Into::into),
        Command::Serve(a) => serve::run(&a).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
