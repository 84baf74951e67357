//! The host's wasi-nn (`wasi:nn@0.2.0-rc-2024-10-28`): models preloaded by name, one execution
//! context per request owning that request's recurrent state, and the backends that compute.
//!
//! How it works:
//! 1. At start-up `tinystate serve --model NAME=FILE.gguf …` loads every model once ([`Models`])
//!    on the chosen backend (`--backend cpu|gpu|auto`, [`BackendChoice`]). Weights are mapped
//!    from the file, never copied per request; the GPU backend uploads them once and allocates
//!    `--nn-slots` fixed-size state slots per model on the device.
//! 2. A guest calls `load-by-name(NAME)` and `graph.init-execution-context()`: the context
//!    ([`Context`]) owns a fresh sequence state (CPU: a [`State`] and its scratch; GPU: a state
//!    slot, reset before reuse). It is freed when the guest drops the resource or when the
//!    instance's store is dropped (end of response, or the client went away).
//! 3. `compute` checks the inputs ([`contract`]), then awaits the backend: the CPU backend runs
//!    on the blocking thread pool; the GPU backend's batcher thread runs the decode steps of all
//!    live contexts as one GPU step, interleaved with prefill pieces (continuous batching).
//!    While it waits, other instances run.
//!
//! ABI glue (bindings, resource handling) is in [`wit`]; backends in [`cpu`] and `gpu` (cargo
//! feature `gpu`, on by default).
//!
//! # The contract (every name the guest and the host share)
//!
//! | what | value |
//! |---|---|
//! | graph names | the `NAME`s of `--model NAME=FILE` (`load-by-name`); `load` (weight bytes) is `unsupported-operation` |
//! | guest environment | `TINYSTATE_MODELS`: the names, comma-separated, in `--model` order (the first is the default) |
//! | input | exactly one named tensor `"tokens"`: type `I32`, dimensions `[n]` or `[1, n]`, `n` in 1..=[`MAX_CHUNK`], little-endian ids, each in `0..vocab` |
//! | input (optional) | at most one named tensor `"greedy"`: type `U8`, dimensions `[1]`, value n in 1..=[`contract::MAX_GREEDY`] (0 is the same as leaving it out): ask for n greedy tokens instead of the logits |
//! | output | without `"greedy"`: one named tensor `"logits"`: type `FP32`, dimensions `[vocab]`, the logits after the last input token |
//! | output with `"greedy"` n | one named tensor `"token"`: type `I32`, dimensions `[n]` (in a greedy run `[k]`, 1 ≤ k ≤ n): the id of the highest logit after the last input token (the lowest id among equals; NaN counts as −∞; all −∞/NaN gives 0), then, for n > 1, the n − 1 ids that follow when each is fed back in turn; no `"logits"`. What greedy sampling without a repetition penalty picks, for 4 bytes a token instead of vocab × 4 (the GPU backend computes it on the device and copies back only that). With n > 1 the context's state afterwards holds the input and the first n − 1 output tokens: the next compute feeds the last one. A guest that stops early (end of text, a stop sequence) just drops the context. On the GPU the n − 1 later tokens run as decode rows without a round trip to the guest |
//! | input (optional) | at most one named tensor `"greedy-run"`: type `I32`, dimensions `[1]`, value r in n..=[`contract::MAX_GREEDY_RUN`] where n is the `"greedy"` value, which must be given (0 is the same as leaving it out): start a **greedy run** of r tokens. The guest promises to take them: until it has r (or drops the context), each compute feeds the last token it got, alone, with `"greedy"` n′ ≥ 1 and no `"greedy-run"`; anything else is `invalid-argument` and leaves the run as it was. Each compute of the run, the first included, returns 1..=n (n′) of its next tokens: those ready, or else the next one as soon as it is. The host may compute them before they are asked for: on the GPU the run goes on as decode rows while the guest streams what it got; the CPU computes them when asked. The tokens are the same either way: what `"greedy"` with one compute per token gives |
//! | input (optional) | at most one named tensor `"greedy-stop"`: type `I32`, dimensions `[k]`, k in 1..=[`contract::MAX_GREEDY_STOPS`], token ids in `0..vocab`, only with `"greedy"`: the greedy tokens of this compute (or of the run it starts) end with the first of these ids, returned as the last token (so an answer may hold fewer than n). The sequence ends there: its state past that token is not defined (the host may have fed it already), and any later compute on the context is `invalid-argument`. What a guest gives for the end-of-generation tokens, so the host computes nothing past the end of the text |
//! | state | carried by the execution context from one `compute` to the next: n > 1 is a prefill chunk, n = 1 a decode step |
//! | limits | at most [`MAX_CONTEXTS_PER_INSTANCE`] live contexts and [`MAX_TENSOR_BYTES`] of live tensor data per instance |
//! | state slots (GPU) | `--nn-slots` per model (default 256), one per live context, server-wide; `init-execution-context` waits up to `--nn-slot-wait` (default 0.5 s) for one when all are taken; the CPU backend allocates a state per context instead |
//! | numerics | CPU: the engine (activations quantised to Q8 against Q8_0 weights); GPU: activations in f32. Logits differ slightly, so a greedy near-tie may pick another token |
//!
//! Errors (`errors.error-code`): unknown name → `not-found`; wrong tensor name, count, type or
//! shape, bad data length, a `"greedy"` value over [`contract::MAX_GREEDY`], token out of range, no tokens
//! → `invalid-argument`; a chunk over [`MAX_CHUNK`], too many contexts, and (GPU) no free state
//! slot within `--nn-slot-wait` → `too-large`; a backend failure (GPU device lost, validation error) → `runtime-error`
//! for the requests of that GPU call, logged; the server keeps running. The message
//! (`error.data`) says which value and which limit. A bad input is never a trap; a tensor
//! constructor over [`MAX_TENSOR_BYTES`] is (it cannot return an error).
//!
//! The inputs choose the outputs: `"greedy"` swaps `"logits"` for `"token"`. A later extension
//! may add output names (e.g. `"top-k"`) the same way, behind optional inputs of its own; a
//! guest that sends none of them gets `"logits"` as before, so new names do not break old
//! guests. A guest finds an output by its name, not by its position in the list.
#![deny(missing_docs)]

pub mod contract;
pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod wit;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::Mamba;
use tinystate_engine::gguf::Gguf;
use tinystate_engine::tokenizer::Tokenizer;

#[cfg(doc)]
use tinystate_engine::arch::mamba::State;

use crate::model_file::ModelFile;
use crate::serve::metrics::Histogram;
use contract::Output;

#[cfg(doc)]
use contract::{MAX_CHUNK, MAX_CONTEXTS_PER_INSTANCE, MAX_TENSOR_BYTES};

/// Why a wasi-nn call failed; [`NnError::code`] is the `error-code` the guest sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NnError {
    /// `load-by-name` of a name not loaded.
    #[error("no model named '{name}' (loaded: {loaded})")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        loaded: String,
    },
    /// `load` with bytes: models are preloaded by the host.
    #[error("loading a graph from bytes is not supported; the host preloads models: use load-by-name")]
    LoadFromBytes,
    /// The inputs do not follow the contract.
    #[error("{0}")]
    Input(String),
    /// No tokens to compute.
    #[error("input 'tokens' is empty")]
    Empty,
    /// A token id is not below the vocabulary size.
    #[error("token id {token} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Its index in the input.
        position: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A chunk longer than [`MAX_CHUNK`].
    #[error("{n} tokens in one compute; the most is {max}: send the prompt in chunks")]
    ChunkTooLong {
        /// Tokens given.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// Too many live execution contexts in one instance.
    #[error("this instance already holds {max} execution contexts (the most allowed)")]
    TooManyContexts {
        /// The limit.
        max: usize,
    },
    /// Every GPU state slot of the model is taken by a live context.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    #[error(
        "all {slots} state slots of this model are in use; retry later, or start the server with \
         a larger --nn-slots"
    )]
    NoFreeSlot {
        /// The model's slots (`--nn-slots`).
        slots: u32,
    },
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(String),
}

impl NnError {
    /// The wasi-nn error code for this error.
    pub fn code(&self) -> wit::ErrorCode {
        use wit::ErrorCode as C;
        match self {
            Self::NotFound { .. } => C::NotFound,
            Self::LoadFromBytes => C::UnsupportedOperation,
            Self::Input(_) | Self::Empty | Self::TokenOutOfRange { .. } => C::InvalidArgument,
            Self::ChunkTooLong { .. } | Self::TooManyContexts { .. } | Self::NoFreeSlot { .. } => C::TooLarge,
            Self::Backend(_) => C::RuntimeError,
        }
    }
}

/// Which backend `--backend` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The GPU if a hardware (non-CPU) adapter exists, else the CPU.
    Auto,
    /// The GPU (wgpu); an error if there is no adapter.
    Gpu,
    /// The engine natively on the host's cores.
    Cpu,
}

/// How `serve` sets up wasi-nn.
pub struct NnConfig {
    /// `--backend`.
    pub backend: BackendChoice,
    /// `--nn-slots`: state slots per model on the GPU backend.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub slots: u32,
    /// `--nn-slot-wait`: how long a new GPU context waits for a free slot before `too-large`.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub slot_wait: std::time::Duration,
    /// Whether the GPU backend may run its GEMMs on tensor cores (`--no-tensor-cores`: no).
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub tensor_cores: bool,
    /// Whether the GPU backend runs one-row decode steps as its fused step (`--no-fused-step`: no).
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub fused_step: bool,
    /// Where the backends count what they do.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub stats: Arc<NnStats>,
}

/// What the backends count, for `/metrics`.
pub struct NnStats {
    /// Sequences per GPU call: decode rows, riders and the lead piece (`tinystate_nn_batch_size`).
    pub batch_size: Histogram,
    /// GPU state slots held by live contexts, over all models (`tinystate_nn_slots_in_use`).
    pub slots_in_use: AtomicI64,
    /// Seconds per GPU call (decode rows and prompt pieces): from its submission, or from when
    /// the call before it was read back if it queued behind that one, to its read-back
    /// (`tinystate_nn_step_seconds`).
    pub step_seconds: Histogram,
    /// Seconds the batcher waited before a step for the streams of the last steps
    /// (`tinystate_nn_linger_seconds`).
    pub linger_seconds: Histogram,
    /// Seconds the batcher sat with nothing to run, waiting for a compute
    /// (`tinystate_nn_idle_seconds`).
    pub idle_seconds: Histogram,
    /// Seconds from the answer to a sequence's compute to its next one-token compute: the
    /// guest's turnaround, wake-up included (`tinystate_nn_turnaround_seconds`).
    pub turnaround_seconds: Histogram,
    /// Seconds a decode row waited from being ready (its compute sent, or, running ahead, its
    /// last step done) to the start of its GPU step (`tinystate_nn_queue_seconds`).
    pub queue_seconds: Histogram,
}

/// Bucket bounds of [`NnStats::batch_size`]: powers of two up to the largest batch.
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Bucket bounds of the batcher's timings, 10 µs to 100 ms.
const STEP_SECONDS: &[f64] = &[1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1];

impl NnStats {
    /// All zero.
    pub fn new() -> Self {
        Self {
            batch_size: Histogram::new(BATCH_SIZES),
            slots_in_use: AtomicI64::new(0),
            step_seconds: Histogram::new(STEP_SECONDS),
            linger_seconds: Histogram::new(STEP_SECONDS),
            idle_seconds: Histogram::new(STEP_SECONDS),
            turnaround_seconds: Histogram::new(STEP_SECONDS),
            queue_seconds: Histogram::new(STEP_SECONDS),
        }
    }
}

impl Default for NnStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Why models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `--model` is not `NAME=FILE`.
    #[error("--model '{0}': expected NAME=FILE.gguf")]
    Spec(String),
    /// Two `--model`s with one name.
    #[error("--model: the name '{0}' is given twice")]
    Duplicate(String),
    /// The file could not be read.
    #[error("model '{name}': cannot open {path}: {source}")]
    Open {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a usable model.
    #[error("model '{name}' ({path}): {message}")]
    Model {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The backend could not be set up.
    #[error("backend: {0}")]
    Backend(String),
}

/// A `--model NAME=FILE` argument.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name guests load it by.
    pub name: String,
    /// The GGUF file.
    pub path: PathBuf,
}

impl std::str::FromStr for ModelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((name, path)) if valid_name(name) && !path.is_empty() => {
                Ok(Self { name: name.to_owned(), path: path.into() })
            }
            _ => Err(LoadError::Spec(s.to_owned()).to_string()),
        }
    }
}

/// A model name: 1..=64 ASCII letters, digits, `-`, `_`, `.` (no comma: names travel
/// comma-separated in `TINYSTATE_MODELS`).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What identifies a tokenizer: vocabulary size and [`Tokenizer::fingerprint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenizerId {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Hash of the token list.
    pub hash: u64,
}

impl TokenizerId {
    /// The id of `tokenizer`.
    pub fn of(tokenizer: &Tokenizer) -> Self {
        Self { vocab: tokenizer.vocab_size(), hash: tokenizer.fingerprint() }
    }
}

impl std::fmt::Display for TokenizerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tokens, fingerprint {:016x}", self.vocab, self.hash)
    }
}

/// One loaded model.
pub struct Model {
    /// Its name.
    pub name: String,
    /// Logits per position.
    pub vocab: usize,
    /// Its tokenizer's identity.
    pub tokenizer: TokenizerId,
    backend: Backend,
}

/// Where a model computes.
enum Backend {
    Cpu(Arc<cpu::CpuModel>),
    #[cfg(feature = "gpu")]
    Gpu(Arc<gpu::GpuBackend>),
}

impl Model {
    /// A fresh sequence on this model (GPU: waiting up to `--nn-slot-wait` for a state slot).
    pub async fn new_context(&self) -> Result<Context, NnError> {
        let inner = match &self.backend {
            Backend::Cpu(m) => Inner::Cpu(cpu::CpuContext::new(m.clone())),
            #[cfg(feature = "gpu")]
            Backend::Gpu(b) => Inner::Gpu(b.new_context(b.slot_wait()).await?),
        };
        Ok(Context { vocab: self.vocab, inner, run: None, ended: None })
    }

    /// The backend's name, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Cpu(_) => "cpu",
            #[cfg(feature = "gpu")]
            Backend::Gpu(_) => "gpu",
        }
    }
}

/// One sequence's state on a backend; dropping it frees the state.
pub struct Context {
    vocab: usize,
    inner: Inner,
    /// The greedy run under way, if any (the contract's `"greedy-run"`).
    run: Option<Run>,
    /// The stop token (`"greedy-stop"`) the sequence ended with, if it did.
    ended: Option<TokenId>,
}

/// A greedy run under way: how many of its tokens the guest has still to take, the last one it
/// took (what its next compute must feed), and its stop tokens.
#[derive(Debug)]
struct Run {
    left: u32,
    last: TokenId,
    stop: Vec<TokenId>,
}

enum Inner {
    Cpu(cpu::CpuContext),
    #[cfg(feature = "gpu")]
    Gpu(gpu::GpuContext),
}

impl Context {
    /// Feeds `tokens` (1..=[`MAX_CHUNK`], each below the vocabulary size) and returns what
    /// follows the last one: the logits (vocab,), or with `greedy` n ≥ 1 the n greedy tokens
    /// (each fed back before the next; see the contract). The tests' shorthand for
    /// [`Context::compute_inputs`] without a run.
    #[cfg(test)]
    pub async fn compute(&mut self, tokens: Vec<TokenId>, greedy: u32) -> Result<Output, NnError> {
        self.compute_inputs(contract::Inputs { tokens, greedy, run: 0, stop: Vec::new() }).await
    }

    /// One `compute` of the contract, greedy runs and stop tokens included: checks `inputs`
    /// against this context (the tokens; while a run is under way, that they feed its last
    /// token; that the sequence has not ended at a stop token) and computes, or takes the run's
    /// next tokens.
    pub async fn compute_inputs(&mut self, inputs: contract::Inputs) -> Result<Output, NnError> {
        let contract::Inputs { tokens, greedy, run, stop } = inputs;
        contract::check_tokens(&tokens, self.vocab)?;
        if !stop.is_empty() {
            contract::check_tokens(&stop, self.vocab)?;
        }
        if let Some(id) = self.ended {
            return Err(NnError::Input(format!(
                "this sequence ended at stop token {} ('{}'); its state is not defined past it: \
                 make a new execution context",
                id.0,
                contract::INPUT_GREEDY_STOP
            )));
        }
        let output = match &self.run {
            Some(r) => {
                check_run_step(r, &tokens, greedy, run, &stop)?;
                let n = greedy.min(r.left);
                match &mut self.inner {
                    // The CPU computes a run's tokens when they are asked for.
                    Inner::Cpu(c) => c.compute(tokens, n, &r.stop).await,
                    #[cfg(feature = "gpu")]
                    Inner::Gpu(c) => c.take_run(n).await,
                }
            }
            None => match &mut self.inner {
                Inner::Cpu(c) => c.compute(tokens, greedy, &stop).await,
                #[cfg(feature = "gpu")]
                Inner::Gpu(c) if run > 0 => c.start_run(tokens, greedy, run, &stop).await,
                #[cfg(feature = "gpu")]
                Inner::Gpu(c) => c.compute(tokens, greedy, &stop).await,
            },
        };
        self.track(run, stop, &output);
        output
    }

    /// Counts the tokens a compute took from the run under way, or starts the run `run` asked
    /// for (with stop tokens `stop`); a failed compute ends the run, and a stop token the
    /// sequence.
    fn track(&mut self, run: u32, stop: Vec<TokenId>, output: &Result<Output, NnError>) {
        let took = match output {
            Ok(Output::Tokens(t)) => t,
            Ok(Output::Logits(_)) => return,
            Err(e) => {
                if matches!(e, NnError::Backend(_)) {
                    self.run = None;
                }
                return;
            }
        };
        let (Some(&last), n) = (took.last(), took.len() as u32) else { return };
        let (left, stop) = match self.run.take() {
            Some(r) => (r.left.saturating_sub(n), r.stop),
            None => (run.saturating_sub(n), stop),
        };
        if stop.contains(&last) {
            self.ended = Some(last);
            return;
        }
        self.run = (left > 0).then_some(Run { left, last, stop });
    }
}

/// Checks a compute made while run `r` is under way: it must feed the run's last token alone
/// and ask for greedy tokens, and start no other run (nor give stop tokens: the run's hold).
fn check_run_step(
    r: &Run,
    tokens: &[TokenId],
    greedy: u32,
    run: u32,
    stop: &[TokenId],
) -> Result<(), NnError> {
    if tokens != [r.last] || greedy == 0 || run > 0 || !stop.is_empty() {
        return Err(NnError::Input(format!(
            "a greedy run is under way ({} tokens left): the next compute must feed its last \
             token ({}) alone with '{}' and neither '{}' nor '{}'; to leave the run, drop the \
             context",
            r.left,
            r.last.0,
            contract::INPUT_GREEDY,
            contract::INPUT_GREEDY_RUN,
            contract::INPUT_GREEDY_STOP
        )));
    }
    Ok(())
}

/// Every model `serve` was given, by name.
pub struct Models {
    by_name: BTreeMap<String, Arc<Model>>,
    /// Names in `--model` order.
    order: Vec<String>,
}

impl Models {
    /// Loads every model in `specs` on the backend `config.backend` resolves to (none: no
    /// backend is set up, so a server without `--model` never touches a GPU).
    pub fn load(specs: &[ModelSpec], config: &NnConfig) -> Result<Self, LoadError> {
        let mut models = Self { by_name: BTreeMap::new(), order: Vec::new() };
        if specs.is_empty() {
            return Ok(models);
        }
        #[cfg_attr(not(feature = "gpu"), allow(unused_mut))]
        let mut kind = resolve_backend(config.backend)?;
        #[cfg(feature = "gpu")]
        if let BackendKind::Gpu(g) = &mut kind {
            g.set_tensor_cores(config.tensor_cores);
            let why = if config.tensor_cores { "" } else { " (--no-tensor-cores)" };
            let on = if g.tensor_cores() { "on" } else { "off" };
            tracing::info!("wasi-nn GPU backend: tensor-core GEMMs {on}{why}");
        }
        for spec in specs {
            if models.by_name.contains_key(&spec.name) {
                return Err(LoadError::Duplicate(spec.name.clone()));
            }
            let model = load_one(spec, &kind, config)?;
            models.order.push(spec.name.clone());
            models.by_name.insert(spec.name.clone(), Arc::new(model));
        }
        Ok(models)
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Model>, NnError> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| NnError::NotFound { name: name.to_owned(), loaded: self.order.join(",") })
    }

    /// The names, in `--model` order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// The models, in `--model` order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.order.iter().filter_map(|n| self.by_name.get(n))
    }
}

/// The backend a choice comes to on this machine.
enum BackendKind {
    Cpu,
    /// The opened device, shared by every model.
    #[cfg(feature = "gpu")]
    Gpu(Box<tinystate_gpu::Gpu>),
}

/// `cpu` is the CPU; `gpu` opens the best adapter (software ones such as lavapipe included) or
/// fails; `auto` is the GPU when a hardware (not CPU) adapter exists, else the CPU.
fn resolve_backend(choice: BackendChoice) -> Result<BackendKind, LoadError> {
    match choice {
        BackendChoice::Cpu => {
            tracing::info!(backend = "cpu", "wasi-nn backend: CPU (--backend cpu)");
            Ok(BackendKind::Cpu)
        }
        BackendChoice::Auto => Ok(auto_backend()),
        BackendChoice::Gpu => gpu_backend(),
    }
}

#[cfg(feature = "gpu")]
fn gpu_backend() -> Result<BackendKind, LoadError> {
    let gpu = tinystate_gpu::Gpu::open(tinystate_gpu::AdapterChoice::Any).map_err(|e| {
        LoadError::Backend(format!("--backend gpu: cannot open a GPU adapter ({e}); use --backend cpu"))
    })?;
    tracing::info!(backend = "gpu", adapter = %gpu.describe(), "wasi-nn backend: GPU (--backend gpu)");
    Ok(BackendKind::Gpu(Box::new(gpu)))
}

#[cfg(not(feature = "gpu"))]
fn gpu_backend() -> Result<BackendKind, LoadError> {
    Err(LoadError::Backend(
        "--backend gpu: this binary was built without the GPU backend; use --backend cpu".into(),
    ))
}

#[cfg(feature = "gpu")]
fn auto_backend() -> BackendKind {
    let Some(name) = hardware_adapter() else {
        tracing::info!(backend = "cpu", "wasi-nn backend: CPU (--backend auto; no hardware GPU adapter)");
        return BackendKind::Cpu;
    };
    match tinystate_gpu::Gpu::open(tinystate_gpu::AdapterChoice::Any) {
        Ok(gpu) => {
            tracing::info!(backend = "gpu", adapter = %gpu.describe(), "wasi-nn backend: GPU (--backend auto)");
            BackendKind::Gpu(Box::new(gpu))
        }
        Err(e) => {
            tracing::warn!(
                backend = "cpu",
                "wasi-nn backend: CPU (--backend auto; {name} did not open: {e})"
            );
            BackendKind::Cpu
        }
    }
}

#[cfg(not(feature = "gpu"))]
fn auto_backend() -> BackendKind {
    tracing::info!(backend = "cpu", "wasi-nn backend: CPU (--backend auto; this binary has no GPU backend)");
    BackendKind::Cpu
}

/// The name of an adapter that is real hardware (discrete, integrated or virtual GPU), if any.
/// `Gpu::open` ranks those before CPU adapters, so it then opens one of them.
#[cfg(feature = "gpu")]
fn hardware_adapter() -> Option<String> {
    if wgpu::Instance::enabled_backend_features().is_empty() {
        return None;
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(|a| a.get_info()).find(|i| is_hardware(i.device_type)).map(|i| i.name)
}

#[cfg(feature = "gpu")]
fn is_hardware(t: wgpu::DeviceType) -> bool {
    use wgpu::DeviceType as T;
    matches!(t, T::DiscreteGpu | T::IntegratedGpu | T::VirtualGpu)
}

/// Maps, parses and loads one model file; logs the time and bytes.
#[cfg_attr(not(feature = "gpu"), allow(unused_variables))]
fn load_one(spec: &ModelSpec, kind: &BackendKind, config: &NnConfig) -> Result<Model, LoadError> {
    let t0 = Instant::now();
    let bad =
        |message: String| LoadError::Model { name: spec.name.clone(), path: spec.path.clone(), message };
    let file = ModelFile::open(&spec.path).map_err(|source| LoadError::Open {
        name: spec.name.clone(),
        path: spec.path.clone(),
        source,
    })?;
    // Served models live as long as the process: the mapping is leaked so the engine's views
    // into it are `'static` and every context can share them.
    let file: &'static ModelFile = Box::leak(Box::new(file));
    let g = Gguf::parse(file.bytes()).map_err(|e| bad(e.to_string()))?;
    let mamba = Mamba::load(&g).map_err(|e| bad(e.to_string()))?;
    let tokenizer = Tokenizer::from_gguf(&g).map_err(|e| bad(format!("tokenizer: {e}")))?;
    let vocab = mamba.config.vocab;
    let backend = match kind {
        BackendKind::Cpu => Backend::Cpu(Arc::new(cpu::CpuModel::new(mamba))),
        #[cfg(feature = "gpu")]
        BackendKind::Gpu(g) => Backend::Gpu(load_gpu(spec, g, &mamba, config).map_err(bad)?),
    };
    let model = Model { name: spec.name.clone(), vocab, tokenizer: TokenizerId::of(&tokenizer), backend };
    tracing::info!(
        model = %spec.name,
        path = %spec.path.display(),
        bytes = file.bytes().len(),
        vocab,
        backend = model.backend_name(),
        load_ms = t0.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(model)
}

/// Uploads `mamba` with `config.slots` state slots and starts its batcher.
#[cfg(feature = "gpu")]
fn load_gpu(
    spec: &ModelSpec,
    gpu: &tinystate_gpu::Gpu,
    mamba: &Mamba<'_>,
    config: &NnConfig,
) -> Result<Arc<gpu::GpuBackend>, String> {
    let slots = config.slots;
    let mut m =
        tinystate_gpu::GpuModel::load(gpu, mamba, slots, slots.min(gpu::MAX_BATCH), gpu::MAX_PREFILL_PIECE)
            .map_err(|e| format!("GPU ({slots} state slots): {e}"))?;
    if !config.fused_step {
        m.set_fused(false);
    }
    match m.fused_workgroups() {
        Some(p) => tracing::info!(model = %spec.name, workgroups = p, "single-stream decode: the fused step"),
        None => {
            // A CPU adapter (lavapipe) keeps the plan: the step would be one workgroup on one core.
            let why = if config.fused_step { "no fused step on this device" } else { "--no-fused-step" };
            tracing::info!(model = %spec.name, "single-stream decode: the dispatch plan ({why})");
        }
    }
    gpu::GpuBackend::start(&spec.name, m, config.stats.clone(), config.slot_wait)
        .map_err(|e| format!("cannot start the GPU batcher thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backend: BackendChoice, slots: u32) -> NnConfig {
        let slot_wait = std::time::Duration::from_millis(500);
        let stats = Arc::new(NnStats::new());
        // f32 GEMMs: the GPU tests compare logits with the CPU's at 1e-3, which the tensor
        // cores' f16 inputs miss (H200); lavapipe has none either way.
        NnConfig { backend, slots, slot_wait, tensor_cores: false, fused_step: true, stats }
    }

    fn load_tiny(file: &str, config: &NnConfig) -> Result<Models, LoadError> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engine/tests/fixtures/parity/tiny")
            .join(file);
        Models::load(&[ModelSpec { name: "tiny".into(), path }], config)
    }

    fn tiny() -> Models {
        load_tiny("model-q8_0.gguf", &config(BackendChoice::Cpu, 1)).expect("load tiny")
    }

    /// The logits of a compute without `greedy`.
    async fn logits(ctx: &mut Context, tokens: Vec<TokenId>) -> Result<Vec<u8>, NnError> {
        match ctx.compute(tokens, 0).await? {
            Output::Logits(b) => Ok(b),
            o => panic!("asked for logits, got {o:?}"),
        }
    }

    /// The token of a compute with `greedy` 1.
    async fn token(ctx: &mut Context, tokens: Vec<TokenId>) -> Result<TokenId, NnError> {
        Ok(greedy_tokens(ctx, tokens, 1).await?[0])
    }

    /// The tokens of a compute with `greedy` n.
    async fn greedy_tokens(ctx: &mut Context, tokens: Vec<TokenId>, n: u32) -> Result<Vec<TokenId>, NnError> {
        match ctx.compute(tokens, n).await? {
            Output::Tokens(t) if t.len() == n as usize => Ok(t),
            o => panic!("asked for {n} greedy tokens, got {o:?}"),
        }
    }

    /// A compute for several greedy tokens gives what one-token computes feeding each back give,
    /// and leaves the state after the last but one of them.
    async fn greedy_run_matches_single_steps(m: &Model) {
        let prompt: Vec<_> = (0..20).map(|i| TokenId((i * 5 + 1) % m.vocab as u32)).collect();
        let (mut run, mut one) = (m.new_context().await.unwrap(), m.new_context().await.unwrap());
        let got = greedy_tokens(&mut run, prompt.clone(), 5).await.unwrap();
        let mut want = vec![token(&mut one, prompt).await.unwrap()];
        while want.len() < 5 {
            let last = want[want.len() - 1];
            want.push(token(&mut one, vec![last]).await.unwrap());
        }
        assert_eq!(got, want, "{}", m.backend_name());
        let next = token(&mut run, vec![got[4]]).await.unwrap();
        assert_eq!(
            next,
            token(&mut one, vec![want[4]]).await.unwrap(),
            "{}: after the run",
            m.backend_name()
        );
    }

    /// Runs `chunks` on two fresh contexts of `m`, one with `greedy` and one without, and
    /// checks that every token is the sampler's greedy choice on the other's logits.
    async fn greedy_matches_logits(m: &Model, chunks: &[Vec<TokenId>]) {
        let (mut g, mut l) = (m.new_context().await.unwrap(), m.new_context().await.unwrap());
        for (i, chunk) in chunks.iter().enumerate() {
            let got = token(&mut g, chunk.clone()).await.unwrap();
            let want =
                tinystate_engine::sampler::argmax(&floats(&logits(&mut l, chunk.clone()).await.unwrap()));
            assert_eq!(got, want, "chunk {i} on {}", m.backend_name());
        }
    }

    /// A prompt over several GPU prefill pieces, then decode steps.
    fn prompt_and_steps(vocab: usize) -> Vec<Vec<TokenId>> {
        let prompt = (0..300).map(|i| TokenId((i * 7 + 3) % vocab as u32)).collect();
        std::iter::once(prompt).chain((0..6).map(|i| vec![TokenId(i * 11 % vocab as u32)])).collect()
    }

    #[tokio::test]
    async fn cpu_context_computes_and_checks_inputs() {
        let models = tiny();
        let m = models.get("tiny").unwrap();
        let mut ctx = m.new_context().await.unwrap();
        let first = logits(&mut ctx, vec![TokenId(1), TokenId(2)]).await.unwrap();
        assert_eq!(first.len(), 4 * m.vocab);
        // Decode steps continue the same sequence.
        let step = logits(&mut ctx, vec![TokenId(3)]).await.unwrap();
        assert_ne!(step, first);
        let e = ctx.compute(vec![TokenId(m.vocab as u32)], 0).await.unwrap_err();
        assert_eq!(e.code(), wit::ErrorCode::InvalidArgument, "{e}");
        let e = ctx.compute(vec![], 1).await.unwrap_err();
        assert_eq!(e, NnError::Empty);
        let e = ctx.compute(vec![TokenId(0); contract::MAX_CHUNK + 1], 0).await.unwrap_err();
        assert_eq!(e.code(), wit::ErrorCode::TooLarge, "{e}");
        // A failed compute leaves the context usable.
        assert_eq!(logits(&mut ctx, vec![TokenId(3)]).await.unwrap().len(), 4 * m.vocab);
    }

    #[tokio::test]
    async fn same_tokens_same_logits_in_one_chunk_or_many() {
        let models = tiny();
        let m = models.get("tiny").unwrap();
        let ids: Vec<TokenId> = (0..70).map(|i| TokenId(i % m.vocab as u32)).collect();
        let whole = logits(&mut m.new_context().await.unwrap(), ids.clone()).await.unwrap();
        let mut ctx = m.new_context().await.unwrap();
        token(&mut ctx, ids[..50].to_vec()).await.unwrap();
        let split = logits(&mut ctx, ids[50..].to_vec()).await.unwrap();
        let diff = floats(&whole).iter().zip(floats(&split)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-3, "max difference {diff}");
    }

    #[tokio::test]
    async fn cpu_greedy_token_is_the_argmax_of_the_logits() {
        let models = tiny();
        let m = models.get("tiny").unwrap();
        greedy_matches_logits(&m, &prompt_and_steps(m.vocab)).await;
        greedy_run_matches_single_steps(&m).await;
    }

    /// A compute for greedy tokens with `"greedy-run"` (and the computes after it).
    async fn run_step(
        ctx: &mut Context,
        tokens: Vec<TokenId>,
        greedy: u32,
        run: u32,
    ) -> Result<Vec<TokenId>, NnError> {
        stop_step(ctx, tokens, (greedy, run), &[]).await
    }

    /// The same with stop tokens.
    async fn stop_step(
        ctx: &mut Context,
        tokens: Vec<TokenId>,
        (greedy, run): (u32, u32),
        stop: &[TokenId],
    ) -> Result<Vec<TokenId>, NnError> {
        let stop = stop.to_vec();
        match ctx.compute_inputs(contract::Inputs { tokens, greedy, run, stop }).await? {
            Output::Tokens(t) if (1..=greedy as usize).contains(&t.len()) => Ok(t),
            o => panic!("asked for 1 to {greedy} greedy tokens, got {o:?}"),
        }
    }

    /// A greedy run gives the tokens one-token computes give, 1 to n per compute; a compute
    /// that strays from it is refused and the run goes on; after it, the context decodes on.
    async fn greedy_run_streams_the_greedy_tokens(m: &Model) {
        let prompt: Vec<_> = (0..20).map(|i| TokenId((i * 3 + 2) % m.vocab as u32)).collect();
        let (mut run, mut one) = (m.new_context().await.unwrap(), m.new_context().await.unwrap());
        let mut want = vec![token(&mut one, prompt.clone()).await.unwrap()];
        while want.len() < 13 {
            let last = want[want.len() - 1];
            want.push(token(&mut one, vec![last]).await.unwrap());
        }
        let mut got = run_step(&mut run, prompt, 3, 12).await.unwrap();
        let mut strays = 0;
        while got.len() < 12 {
            let last = got[got.len() - 1];
            if strays < 3 {
                let stray = [
                    contract::Inputs {
                        tokens: vec![TokenId((last.0 + 1) % m.vocab as u32)],
                        greedy: 2,
                        run: 0,
                        stop: Vec::new(),
                    },
                    contract::Inputs { tokens: vec![last], greedy: 0, run: 0, stop: Vec::new() },
                    contract::Inputs { tokens: vec![last], greedy: 2, run: 4, stop: vec![last] },
                ][strays]
                    .clone();
                let e = run.compute_inputs(stray).await.unwrap_err();
                assert_eq!(e.code(), wit::ErrorCode::InvalidArgument, "{e}");
                assert!(e.to_string().contains("greedy run is under way"), "{e}");
                strays += 1;
            }
            let more = run_step(&mut run, vec![last], 5, 0).await.unwrap();
            assert!(got.len() + more.len() <= 12, "{}: past the run's 12", m.backend_name());
            got.extend(more);
        }
        assert_eq!(got, want[..12], "{}", m.backend_name());
        // The run is over: the next compute feeds its last token as any compute does.
        let next = token(&mut run, vec![got[11]]).await.unwrap();
        assert_eq!(next, want[12], "{}: after the run", m.backend_name());
    }

    /// Greedy tokens end with the first stop token, whole or in a run; the sequence ends
    /// there: a later compute is refused.
    async fn greedy_tokens_end_at_a_stop_token(m: &Model) {
        let prompt: Vec<_> = (0..9).map(|i| TokenId((i * 7 + 1) % m.vocab as u32)).collect();
        let mut one = m.new_context().await.unwrap();
        let mut want = vec![token(&mut one, prompt.clone()).await.unwrap()];
        while want.len() < 10 {
            let last = want[want.len() - 1];
            want.push(token(&mut one, vec![last]).await.unwrap());
        }
        let stop = want[5];
        let want = &want[..=want.iter().position(|&t| t == stop).unwrap()];
        for run in [0, 10] {
            let mut ctx = m.new_context().await.unwrap();
            let mut got = stop_step(&mut ctx, prompt.clone(), (if run > 0 { 2 } else { 10 }, run), &[stop])
                .await
                .unwrap();
            while got.last() != Some(&stop) {
                got.extend(run_step(&mut ctx, vec![got[got.len() - 1]], 2, 0).await.unwrap());
            }
            assert_eq!(got, want, "{} run {run}", m.backend_name());
            let e = ctx.compute(vec![stop], 1).await.unwrap_err();
            assert_eq!(e.code(), wit::ErrorCode::InvalidArgument, "{e}");
            assert!(e.to_string().contains("ended at stop token"), "{e}");
        }
    }

    #[tokio::test]
    async fn cpu_greedy_tokens_end_at_a_stop_token() {
        greedy_tokens_end_at_a_stop_token(&tiny().get("tiny").unwrap()).await;
    }

    #[tokio::test]
    async fn cpu_greedy_run_streams_the_greedy_tokens() {
        let models = tiny();
        greedy_run_streams_the_greedy_tokens(&models.get("tiny").unwrap()).await;
    }

    #[test]
    fn unknown_names_and_bad_specs() {
        let models = tiny();
        let e = models.get("nope").map(|_| ()).unwrap_err();
        assert_eq!(e.code(), wit::ErrorCode::NotFound);
        assert!(e.to_string().contains("tiny"), "{e}");
        assert!("a=b.gguf".parse::<ModelSpec>().is_ok());
        for bad in ["a", "=x.gguf", "a=", "a,b=x.gguf", "a b=x"] {
            assert!(bad.parse::<ModelSpec>().is_err(), "{bad}");
        }
        #[cfg(not(feature = "gpu"))]
        assert!(matches!(
            load_tiny("model-q8_0.gguf", &config(BackendChoice::Gpu, 1)),
            Err(LoadError::Backend(_))
        ));
    }

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// The tiny F32 model on the real GPU backend (lavapipe will do); `None` (with a note) when
    /// there is no adapter and `CI` is unset.
    #[cfg(feature = "gpu")]
    fn tiny_on_gpu(slots: u32) -> Option<(Models, Arc<NnStats>)> {
        let c = config(BackendChoice::Gpu, slots);
        match load_tiny("model-f32.gguf", &c) {
            Ok(m) => Some((m, c.stats)),
            Err(e) if std::env::var_os("CI").is_none() && e.to_string().contains("no GPU adapter") => {
                eprintln!("note: skipping a GPU test: {e}");
                None
            }
            Err(e) => panic!("GPU backend: {e}"),
        }
    }

    #[cfg(feature = "gpu")]
    #[tokio::test]
    async fn gpu_context_matches_cpu_and_holds_a_slot() {
        let Some((gpu, stats)) = tiny_on_gpu(2) else { return };
        let cpu = load_tiny("model-f32.gguf", &config(BackendChoice::Cpu, 1)).unwrap();
        let (g, c) = (gpu.get("tiny").unwrap(), cpu.get("tiny").unwrap());
        assert_eq!(g.backend_name(), "gpu");
        let (mut gc, mut cc) = (g.new_context().await.unwrap(), c.new_context().await.unwrap());
        // 300 tokens: the GPU runs them as pieces of MAX_PREFILL_PIECE.
        let prompt: Vec<TokenId> = (0..300).map(|i| TokenId(i % g.vocab as u32)).collect();
        let chunks = [prompt, vec![TokenId(5)], vec![TokenId(9)]];
        for chunk in chunks {
            let (a, b) =
                (logits(&mut gc, chunk.clone()).await.unwrap(), logits(&mut cc, chunk).await.unwrap());
            let diff = floats(&a).iter().zip(floats(&b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-3, "max difference {diff}");
        }
        let _second = g.new_context().await.unwrap();
        let e = g.new_context().await.map(|_| ()).unwrap_err();
        assert_eq!(e.code(), wit::ErrorCode::TooLarge, "{e}");
        assert_eq!(stats.slots_in_use.load(std::sync::atomic::Ordering::Relaxed), 2);
        let e = gc.compute(vec![TokenId(g.vocab as u32)], 1).await.unwrap_err();
        assert_eq!(e.code(), wit::ErrorCode::InvalidArgument, "{e}");
    }

    /// The GPU's greedy token (its argmax kernel) is the sampler's choice on the GPU's logits,
    /// through prefill pieces and decode steps.
    #[cfg(feature = "gpu")]
    #[tokio::test]
    async fn gpu_greedy_token_is_the_argmax_of_its_logits() {
        let Some((gpu, _)) = tiny_on_gpu(2) else { return };
        let m = gpu.get("tiny").unwrap();
        greedy_matches_logits(&m, &prompt_and_steps(m.vocab)).await;
        greedy_run_matches_single_steps(&m).await;
    }

    /// On the GPU a greedy run goes on as decode rows while its tokens wait to be taken.
    #[cfg(feature = "gpu")]
    #[tokio::test]
    async fn gpu_greedy_run_streams_the_greedy_tokens() {
        let Some((gpu, _)) = tiny_on_gpu(2) else { return };
        let m = gpu.get("tiny").unwrap();
        greedy_run_streams_the_greedy_tokens(&m).await;
        greedy_tokens_end_at_a_stop_token(&m).await;
    }
}
