//! The `ferrotune` binary: parses the command line, sets up logging, runs one subcommand and turns any
//! error into a one-line `error: ...` (plus its causes) and exit status 1. Usage errors exit 2 (clap).

mod acquire_cmd;
mod cpu_tuning;
mod data_cmd;
mod demo_cmd;
mod distcheck_cmd;
mod env_cmd;
mod estimate_cmd;
mod gptq_cmd;
mod infer_cmd;
mod launch_cmd;
mod logging;
mod model_cmd;
mod quant_cmd;
mod tokenizer_cmd;
mod train_cmd;
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
    /// Download a model repository from the Hugging Face Hub (resumable, verified).
    Download(acquire_cmd::DownloadArgs),
    /// Convert a Meta .pth, llama2.c .bin or GGUF checkpoint to an HF Llama directory.
    Convert(acquire_cmd::ConvertArgs),
    /// Merge a PEFT LoRA adapter into its base model and write a full HF checkpoint.
    MergeLora(model_cmd::MergeLoraArgs),
    /// Per-token log-probabilities and perplexity of each line of a text file.
    Eval(model_cmd::EvalArgs),
    /// Extend a LLaMA SentencePiece vocabulary with other models' pieces; write SentencePiece + HF files.
    MergeTokenizer(tokenizer_cmd::MergeTokenizerArgs),
    /// Print the ids and pieces of texts, or token counts per line of a file.
    Tokenize(tokenizer_cmd::TokenizeArgs),
    /// Train a new SentencePiece model (unigram or BPE) from a text corpus.
    TrainTokenizer(tokenizer_cmd::TrainTokenizerArgs),
    /// Fine-tune a model (stages pt / sft; lora, full or freeze) from a TOML recipe.
    Train(train_cmd::TrainArgs),
    /// Complete text prompts (batched; streamed for one prompt; --json for machine output).
    Generate(infer_cmd::GenerateArgs),
    /// Interactive chat with history and streaming answers (/reset, /system, /exit; Ctrl-C stops an answer).
    Chat(infer_cmd::ChatArgs),
    /// HTTP server: POST /stream, OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models, /health.
    Serve(infer_cmd::ServeArgs),
    /// Tokenize datasets with a chat template into a cached, packed, split training set.
    PrepareData(data_cmd::PrepareDataArgs),
    /// Show one sample of a prepared dataset (trained tokens highlighted, or --json).
    InspectData(data_cmd::InspectDataArgs),
    /// Greedy answers to held-out questions (JSON) and their exact-match score, with or without an adapter.
    Answer(train_cmd::AnswerArgs),
    /// Run a ferrotune subcommand on N local workers (torchrun env), or on every node of a hostfile over ssh.
    Launch(launch_cmd::LaunchArgs),
    /// Worker check for `launch`: Gloo group from the environment, three collectives, printed results.
    #[command(hide = true)]
    DistSelftest(launch_cmd::DistSelftestArgs),
    /// The before/after table of the demo fine-tune (eval loss, token accuracy, exact match per task).
    DemoReport(demo_cmd::DemoReportArgs),
    /// Predict training memory (weights, gradients, optimizer, activations) on one GPU and per GPU when sharded.
    Estimate(estimate_cmd::EstimateArgs),
    /// Write a pre-quantized checkpoint (nf4 / fp4 with optional double quant, int8).
    Quantize(quant_cmd::QuantizeArgs),
    // new subcommands go above this comment
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Env(a) => env_cmd::run(a),
        Command::Download(a) => acquire_cmd::run_download(a),
        Command::Convert(a) => acquire_cmd::run_convert(a),
        Command::MergeLora(a) => model_cmd::merge_lora(a),
        Command::Eval(a) => model_cmd::eval(a),
        Command::MergeTokenizer(a) => tokenizer_cmd::merge(a),
        Command::Tokenize(a) => tokenizer_cmd::tokenize(a),
        Command::TrainTokenizer(a) => tokenizer_cmd::train_tokenizer(a),
        Command::Train(a) => train_cmd::run(a),
        Command::Generate(a) => infer_cmd::generate(a),
        Command::Chat(a) => infer_cmd::chat(a),
        Command::Serve(a) => infer_cmd::serve(a),
        Command::PrepareData(a) => data_cmd::run_prepare(a),
        Command::InspectData(a) => data_cmd::run_inspect(a),
        Command::Answer(a) => train_cmd::answer(a),
        Command::Launch(a) => launch_cmd::run(a),
        Command::DistSelftest(a) => launch_cmd::selftest(a),
        Command::DemoReport(a) => demo_cmd::run(a),
        Command::Estimate(a) => estimate_cmd::run(a),
        Command::Quantize(a) => quant_cmd::run(a),
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
