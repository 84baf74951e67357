//! The `run`, `logits` and `info` commands: the engine on the command line, for trying models and
//! for checking them against other engines token by token.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::{DEFAULT_MAX_CHUNK, Mamba, ModelError};
use tinystate_engine::generate::{CpuDecoder, DecodeError, Decoder, GenerateParams, Generator};
use tinystate_engine::gguf::{Gguf, GgufError, Value};
use tinystate_engine::sampler::SamplerConfig;
use tinystate_engine::tokenizer::{Tokenizer, TokenizerError};

use crate::ModelArgs;
use crate::model_file::ModelFile;

/// Everything that can end a CLI command early.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The model file could not be opened.
    #[error("cannot open model '{path}': {source}")]
    Open {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model file is not valid GGUF.
    #[error("{path}: {source}")]
    Gguf {
        /// The path given.
        path: String,
        /// The parse error.
        source: GgufError,
    },
    /// The GGUF is not a usable model.
    #[error("{path}: {source}")]
    Model {
        /// The path given.
        path: String,
        /// Why.
        source: ModelError,
    },
    /// The GGUF's tokenizer is not usable.
    #[error("{path}: tokenizer: {source}")]
    Tokenizer {
        /// The path given.
        path: String,
        /// Why.
        source: TokenizerError,
    },
    /// A decode step failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
    /// Writing output failed.
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
    /// The thread pool could not start.
    #[error("thread pool: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
}

/// Arguments of `tinystate run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(short, long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids (no BOS is added).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    tokens: Option<Vec<u32>>,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// RNG seed (default: from the clock, printed on stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-text tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print the generated token ids (comma-separated) instead of text.
    #[arg(long)]
    print_ids: bool,
    /// Tokens per prefill pass.
    #[arg(long, default_value_t = DEFAULT_MAX_CHUNK)]
    chunk: usize,
}

/// Arguments of `tinystate logits`.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    tokens: Vec<u32>,
}

/// A model file with its parsed header, ready to build a decoder from.
struct Loaded {
    file: ModelFile,
}

impl Loaded {
    fn open(args: &ModelArgs) -> Result<Self, CliError> {
        if let Some(n) = args.threads {
            rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global()?;
        }
        let path = args.model.display().to_string();
        let file = ModelFile::open(&args.model).map_err(|source| CliError::Open { path, source })?;
        Ok(Self { file })
    }

    fn path(&self) -> String {
        self.file.path().display().to_string()
    }

    fn gguf(&self) -> Result<Gguf<'_>, CliError> {
        Gguf::parse(self.file.bytes()).map_err(|source| CliError::Gguf { path: self.path(), source })
    }

    fn model<'a>(&self, g: &Gguf<'a>) -> Result<Mamba<'a>, CliError> {
        Mamba::load(g).map_err(|source| CliError::Model { path: self.path(), source })
    }
}

/// `tinystate run`: stream a completion, then report prefill and decode speed on stderr.
pub fn run(a: &RunArgs) -> Result<(), CliError> {
    let loaded = Loaded::open(&a.model)?;
    let g = loaded.gguf()?;
    let model = loaded.model(&g)?;
    let tok =
        Tokenizer::from_gguf(&g).map_err(|source| CliError::Tokenizer { path: loaded.path(), source })?;
    let prompt = prompt_tokens(a, &tok)?;
    if a.max_tokens == 0 {
        return Err(CliError::Usage("-n must be at least 1".into()));
    }
    let seed = a.seed.unwrap_or_else(clock_seed);
    if a.seed.is_none() && a.temp > 0.0 {
        eprintln!("seed: {seed}");
    }
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampler: SamplerConfig {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repeat_penalty,
            repeat_last_n: a.repeat_last_n,
            seed,
        },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    let mut dec = CpuDecoder::new(&model, a.chunk);
    let mut generator = Generator::new(&tok, dec.vocab(), &params);
    generator.observe_prompt(&prompt);

    let mut out = std::io::stdout().lock();
    let t0 = Instant::now();
    let mut logits = dec.feed(&prompt)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut ids = Vec::new();
    loop {
        let p = generator.next(logits);
        if a.print_ids {
            ids.push(p.token.0.to_string());
        } else {
            out.write_all(p.text.as_bytes())?;
            out.flush()?;
        }
        if p.finish.is_some() {
            break;
        }
        let next = p.token;
        logits = dec.feed(&[next])?;
    }
    let decode = t1.elapsed();
    if a.print_ids {
        writeln!(out, "{}", ids.join(","))?;
    } else {
        writeln!(out)?;
    }
    out.flush()?;
    let n = generator.produced();
    eprintln!(
        "prefill: {} tokens in {} ({}) | decode: {} tokens in {} ({}) | kernels: {}",
        prompt.len(),
        ms(prefill),
        per_second(prompt.len(), prefill),
        n,
        ms(decode),
        // The first produced token comes from the prefill's logits: n − 1 decode steps.
        per_second(n.saturating_sub(1), decode),
        tinystate_engine::kernels::backend_name()
    );
    Ok(())
}

/// `tinystate logits`: the last position's logits as a JSON array.
pub fn logits(a: &LogitsArgs) -> Result<(), CliError> {
    let loaded = Loaded::open(&a.model)?;
    let g = loaded.gguf()?;
    let model = loaded.model(&g)?;
    let ids: Vec<TokenId> = a.tokens.iter().map(|&t| TokenId(t)).collect();
    let mut dec = CpuDecoder::new(&model, DEFAULT_MAX_CHUNK);
    let logits = dec.feed(&ids)?;
    let json = serde_json::to_string(&logits.iter().map(|&v| v as f64).collect::<Vec<_>>())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{json}");
    Ok(())
}

/// `tinystate info`: metadata (long arrays abbreviated) and the tensor table.
pub fn info(a: &ModelArgs) -> Result<(), CliError> {
    let loaded = Loaded::open(a)?;
    let g = loaded.gguf()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: GGUF v{}, alignment {}", loaded.path(), g.version(), g.alignment())?;
    for (key, value) in g.metadata() {
        writeln!(out, "  {key} = {}", show_value(value))?;
    }
    let mut total = 0u64;
    for t in g.tensors() {
        total += t.data.len() as u64;
        writeln!(out, "  tensor {} {:?} {} ({} bytes)", t.name, t.dims(), t.ty, t.data.len())?;
    }
    writeln!(out, "{} tensors, {:.1} MiB of weights", g.tensors().len(), total as f64 / 1048576.0)?;
    if let Ok(m) = Mamba::load(&g) {
        writeln!(out, "mamba: {:?}; state {} bytes per sequence", m.config, m.config.state_bytes())?;
    }
    Ok(())
}

fn show_value(v: &Value<'_>) -> String {
    match v {
        Value::Array(arr) => {
            let head: Vec<String> = arr.iter().take(4).map(|e| show_value(&e)).collect();
            let more = if arr.len() > 4 { ", …" } else { "" };
            format!("[{}{more}] ({} × {:?})", head.join(", "), arr.len(), arr.elem_type())
        }
        Value::Str(s) if s.len() > 80 => format!("{:?}…", &s[..s.floor_char_boundary(80)]),
        other => format!("{other:?}"),
    }
}

fn prompt_tokens(a: &RunArgs, tok: &Tokenizer) -> Result<Vec<TokenId>, CliError> {
    if let Some(ids) = &a.tokens {
        return Ok(ids.iter().map(|&t| TokenId(t)).collect());
    }
    let text = a.prompt.as_deref().ok_or_else(|| CliError::Usage("give --prompt or --tokens".into()))?;
    let mut ids = Vec::new();
    if let (true, Some(bos)) = (tok.add_bos(), tok.bos()) {
        ids.push(bos);
    }
    tok.encode(text, false, &mut ids);
    if ids.is_empty() {
        return Err(CliError::Usage("the prompt encodes to no tokens".into()));
    }
    Ok(ids)
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_nanos() as u64
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn per_second(n: usize, d: Duration) -> String {
    if n == 0 || d.is_zero() {
        return "– tok/s".into();
    }
    format!("{:.1} tok/s", n as f64 / d.as_secs_f64())
}

/// Arguments of `tinystate bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens fed one at a time per repetition.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Tokens prefilled per repetition (0 = skip).
    #[arg(long, default_value_t = 256)]
    prefill: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Tokens per prefill pass.
    #[arg(long, default_value_t = DEFAULT_MAX_CHUNK)]
    chunk: usize,
}

/// `tinystate bench`: prefill and decode tokens/s as one JSON line, measured the way
/// `shared/peers/llamacpp_speed.py` measures llama.cpp (same token pattern, medians of reps).
pub fn bench(a: &BenchArgs) -> Result<(), CliError> {
    let loaded = Loaded::open(&a.model)?;
    let g = loaded.gguf()?;
    let model = loaded.model(&g)?;
    let v = model.config.vocab;
    if v <= 300 {
        return Err(CliError::Usage("bench needs a vocabulary of more than 300 tokens".into()));
    }
    // The peer script's token pattern, so both engines see the same ids.
    let tok = |i: usize| TokenId((256 + (i * 7919) % (v - 300)) as u32);
    let mut dec = CpuDecoder::new(&model, a.chunk);
    let (mut pf, mut dc) = (Vec::new(), Vec::new());
    for _ in 0..a.reps.max(1) {
        if a.prefill > 0 {
            dec.reset();
            let ids: Vec<TokenId> = (0..a.prefill).map(tok).collect();
            let t = Instant::now();
            dec.feed(&ids)?;
            pf.push(a.prefill as f64 / t.elapsed().as_secs_f64());
        }
        dec.reset();
        let t = Instant::now();
        for i in 0..a.decode {
            dec.feed(&[tok(i + 17)])?;
        }
        dc.push(a.decode as f64 / t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let res = serde_json::json!({
        "model": loaded.path(),
        "threads": rayon::current_num_threads(),
        "kernels": tinystate_engine::kernels::backend_name(),
        "prefill_tok_s_median": median(&mut pf),
        "decode_tok_s_median": median(&mut dc),
    });
    println!("{res}");
    Ok(())
}
