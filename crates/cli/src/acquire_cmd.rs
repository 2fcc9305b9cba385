//! `ferrotune download` (a Hugging Face Hub repository, resumable and verified) and `ferrotune convert`
//! (Meta `.pth`, llama2.c `.bin` or GGUF checkpoints to an HF Llama directory).

use anyhow::Context;
use clap::{Args, ValueEnum};
use ferrotune_model::hub::{download_repo, HubOptions};
use std::path::PathBuf;

/// Arguments of `ferrotune download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Repository on the hub, ORG/NAME.
    #[arg(long)]
    pub repo_id: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Only files matching this glob (`*.safetensors`); repeatable.
    #[arg(long)]
    pub include: Vec<String>,
    /// Output directory [default: models/ORG/NAME].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Retries per request after a dropped connection or a server error.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

/// Source checkpoint formats of `ferrotune convert`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConvertFrom {
    /// Meta's consolidated.*.pth + params.json directory.
    Meta,
    /// A llama2.c checkpoint (.bin, legacy export).
    Llama2c,
    /// A llama.cpp GGUF file (F32/F16/BF16 tensors).
    Gguf,
}

/// Arguments of `ferrotune convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source format.
    #[arg(long)]
    pub from: ConvertFrom,
    /// Input checkpoint: a directory for meta, a file for llama2c and gguf.
    #[arg(long)]
    pub input: PathBuf,
    /// Tokenizer: SentencePiece tokenizer.model (meta, llama2c) or llama2.c tokenizer.bin (llama2c).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output HF directory (replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_download(a: DownloadArgs) -> anyhow::Result<()> {
    let mut opts = HubOptions::from_env();
    opts.revision = a.revision;
    opts.include = a.include;
    opts.retries = a.retries;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("models").join(&a.repo_id));
    let files = download_repo(&a.repo_id, &out, &opts)
        .with_context(|| format!("downloading {} from {}", a.repo_id, opts.endpoint))?;
    for f in &files {
        println!("{}", f.display());
    }
    eprintln!("{} files in {}", files.len(), out.display());
    Ok(())
}

pub fn run_convert(a: ConvertArgs) -> anyhow::Result<()> {
    use ferrotune_model::{convert_gguf, convert_llama2c, convert_meta};
    let tok = a.tokenizer.as_deref();
    let dims = match a.from {
        ConvertFrom::Meta => convert_meta::convert_meta(&a.input, tok, &a.out),
        ConvertFrom::Llama2c => convert_llama2c::convert_llama2c(&a.input, tok, &a.out),
        ConvertFrom::Gguf => {
            if tok.is_some() {
                anyhow::bail!("--tokenizer is not used with --from gguf: the vocabulary comes from the GGUF file");
            }
            convert_gguf::convert_gguf(&a.input, &a.out)
        }
    }
    .with_context(|| format!("converting {} ({:?})", a.input.display(), a.from))?;
    println!("{}", a.out.display());
    eprintln!(
        "Llama: {} layers, hidden {}, {} heads ({} kv), vocab {}, tied embeddings: {}",
        dims.num_hidden_layers,
        dims.hidden_size,
        dims.num_attention_heads,
        dims.num_key_value_heads,
        dims.vocab_size,
        dims.tie_word_embeddings
    );
    Ok(())
}
