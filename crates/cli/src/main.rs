//! The `ferrotune` binary: parses the command line, sets up logging, runs one subcommand and turns any
//! error into a one-line `error: ...` (plus its causes) and exit status 1. Usage errors exit 2 (clap).

mod env_cmd;
mod logging;
// subcommand modules: one file per subcommand family, `mod <area>_cmd;` lines go above this comment

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Fine-tune LLaMA-family models end to end: tokenizer extension, data preparation, LoRA / full training,
/// quantization, merging and serving.
#[derive(Debug, Parser)]
#[command(name = "ferrotune", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the ferrotune, libtorch and accelerator environment.
    Env(env_cmd::EnvArgs),
    // new subcommands go above this comment
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Env(a) => env_cmd::run(a),
        // new match arms go above this comment
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    logging::install_panic_hook();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::report_error(&e);
            ExitCode::from(1)
        }
    }
}
