//! `ferrotune generate` (text completion of one or more prompts, batched), `ferrotune chat` (interactive
//! REPL with history, streaming answers, `/reset`, `/system`, `/exit`; Ctrl-C stops the answer, not the
//! program) and `ferrotune serve` (the HTTP server: `/stream` and OpenAI-compatible endpoints).

use anyhow::{bail, Context};
use ferrotune_core::{DType, DeviceSpec};
use ferrotune_infer::chat::{ChatFormatter, ChatMessage};
use ferrotune_infer::generate::generate_batch_adapters;
use ferrotune_infer::load::{load, LoadOptions, Loaded};
use ferrotune_infer::server::{run_blocking, AppState, RequestLimits, ServerConfig};
use ferrotune_infer::{
    EngineConfig, EngineHandle, GenerationParams, SamplingParams, TextCodec, TokenStream,
};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Model loading flags shared by the three subcommands.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// HF model directory (config.json + safetensors + tokenizer), base or merged.
    #[arg(long)]
    model: PathBuf,
    /// Tokenizer file or directory (default: the model directory).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Chat template (alpaca, llama2, llama3, chatml, vicuna, default, yuan, empty, or one from
    /// --template-file); default: the one recorded in the run's resolved_config.toml, else `default`.
    #[arg(long)]
    template: Option<String>,
    /// TOML file with extra chat templates.
    #[arg(long)]
    template_file: Option<PathBuf>,
    /// Weight dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Penalty on tokens already present (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed (generation is deterministic for a seed on CPU).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past EOS (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    fn params(&self, stop_ids: &[u32]) -> GenerationParams {
        GenerationParams {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            stop_token_ids: if self.ignore_eos {
                Vec::new()
            } else {
                stop_ids.to_vec()
            },
            ignore_eos: self.ignore_eos,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A PEFT LoRA adapter directory, applied unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Prompt text (repeatable: all prompts are decoded in one batch).
    #[arg(
        long,
        required_unless_present = "prompt_file",
        conflicts_with = "prompt_file"
    )]
    prompt: Vec<String>,
    /// File with one prompt per line (empty lines skipped).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Format each prompt with the chat template (as a user message) instead of completing raw text.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object per prompt (text, token ids and counts, finish reason).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A PEFT LoRA adapter directory, applied unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// LoRA adapter served as model NAME (repeatable): `--adapter NAME=DIR`.
    #[arg(long, value_parser = parse_adapter)]
    adapter: Vec<(String, PathBuf)>,
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port (0 = any free port; the bound address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "FERROTUNE_API_KEY")]
    api_key: Option<String>,
    /// Most requests decoded together.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// `max_tokens` when a request gives none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// System prompt for `/stream` requests.
    #[arg(long)]
    system: Option<String>,
    /// Name of the base model in /v1/models (default: the model directory's name).
    #[arg(long)]
    model_name: Option<String>,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("expected NAME=DIR, got `{s}`")),
    }
}

fn open(m: &ModelArgs, adapters: Vec<(String, PathBuf)>) -> anyhow::Result<Loaded> {
    if let Some(t) = m.threads {
        tch::set_num_threads(t);
    }
    let opts = LoadOptions {
        dtype: Some(m.dtype),
        device: Some(m.device),
        adapters,
        template: m.template.clone(),
        template_file: m.template_file.clone(),
        tokenizer: m.tokenizer.clone(),
    };
    load(&m.model, &opts).with_context(|| format!("loading {}", m.model.display()))
}

const ADAPTER: &str = "adapter";

fn single_adapter(a: &Option<PathBuf>) -> Vec<(String, PathBuf)> {
    a.iter().map(|p| (ADAPTER.to_string(), p.clone())).collect()
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let prompts: Vec<String> = match &args.prompt_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => args.prompt.clone(),
    };
    if prompts.is_empty() {
        bail!("no prompts given");
    }
    let loaded = open(&args.model, single_adapter(&args.adapter))?;
    let codec: &dyn TextCodec = loaded.tokenizer.as_ref();
    let ids = prompts
        .iter()
        .map(|p| {
            if args.chat {
                loaded
                    .chat
                    .prompt_ids(codec, &[ChatMessage::new("user", p.clone())])
            } else {
                codec.encode(p, true)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = args.sampling.params(&loaded.stop_ids);
    if args.chat {
        params.stop.extend(loaded.chat.stop_strings());
    }
    let adapter = args.adapter.as_ref().map(|_| ADAPTER.to_string());
    if prompts.len() == 1 && !args.json {
        // One prompt: stream the text as it is generated.
        let stream =
            TokenStream::new(&loaded.model, codec, ids[0].clone(), &params)?.with_adapter(adapter);
        let mut out = std::io::stdout().lock();
        for u in stream {
            out.write_all(u?.delta.as_bytes())?;
            out.flush()?;
        }
        writeln!(out)?;
        return Ok(());
    }
    let adapters = vec![adapter; ids.len()];
    let started = std::time::Instant::now();
    let done = generate_batch_adapters(
        &loaded.model,
        loaded.tokenizer.as_ref(),
        &ids,
        &params,
        &adapters,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    for (p, c) in prompts.iter().zip(done) {
        if args.json {
            let mut v = serde_json::to_value(&c)?;
            v["prompt"] = serde_json::Value::String(p.clone());
            // Wall time of the whole batch (prefill + decode), for throughput measurements.
            v["batch_seconds"] = serde_json::json!(seconds);
            println!("{v}");
        } else {
            println!("{}\n", c.text);
        }
    }
    Ok(())
}

pub fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let loaded = open(&args.model, single_adapter(&args.adapter))?;
    let codec: &dyn TextCodec = loaded.tokenizer.as_ref();
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let mut params = args.sampling.params(&loaded.stop_ids);
    params.stop.extend(loaded.chat.stop_strings());
    let mut system = args.system.clone();
    let mut history: Vec<ChatMessage> = Vec::new();
    eprintln!(
        "ferrotune chat ({} template). Commands: /reset, /system TEXT, /exit. Ctrl-C stops an answer.",
        loaded.chat.name()
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        interrupted.store(false, Ordering::SeqCst);
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                eprintln!("(history cleared)");
                continue;
            }
            l if l == "/system" || l.starts_with("/system ") => {
                let s = l.trim_start_matches("/system").trim();
                system = (!s.is_empty()).then(|| s.to_string());
                history.clear();
                eprintln!("(system prompt set; history cleared)");
                continue;
            }
            _ => {}
        }
        let mut messages: Vec<ChatMessage> = system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .collect();
        messages.extend(history.iter().cloned());
        messages.push(ChatMessage::new("user", line));
        let ids = loaded.chat.prompt_ids(codec, &messages)?;
        let stream = match TokenStream::new(&loaded.model, codec, ids, &params) {
            Ok(s) => s.with_adapter(args.adapter.as_ref().map(|_| ADAPTER.to_string())),
            Err(e) => {
                eprintln!("error: {e} (try /reset)");
                continue;
            }
        };
        let mut answer = String::new();
        for u in stream {
            if interrupted.load(Ordering::SeqCst) {
                eprint!(" [stopped]");
                break;
            }
            let d = u?.delta;
            answer.push_str(&d);
            out.write_all(d.as_bytes())?;
            out.flush()?;
        }
        writeln!(out)?;
        history.push(ChatMessage::new("user", line));
        history.push(ChatMessage::new("assistant", answer.trim().to_string()));
    }
    Ok(())
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let loaded = open(&args.model, args.adapter.clone())?;
    let cfg = ServerConfig {
        model_name: args
            .model_name
            .clone()
            .unwrap_or_else(|| loaded.name.clone()),
        api_key: args.api_key.clone(),
        max_body_bytes: args.max_body_bytes,
        limits: RequestLimits {
            default_max_tokens: args.default_max_tokens,
        },
        stream_system: args.system.clone(),
        stop_token_ids: loaded.stop_ids.clone(),
    };
    let codec: Arc<dyn TextCodec> = loaded.tokenizer.clone();
    let chat: Arc<dyn ChatFormatter> = loaded.chat.clone();
    let engine = EngineHandle::spawn(
        Box::new(loaded.model),
        codec.clone(),
        EngineConfig {
            max_batch: args.max_batch,
        },
    );
    let state = AppState::new(engine, codec, chat, cfg);
    let addr = SocketAddr::new(args.host, args.port);
    run_blocking(state, addr, |a| {
        println!("ferrotune serve: listening on http://{a}");
        let _ = std::io::stdout().flush();
    })
    .with_context(|| format!("serving on {addr}"))
}
