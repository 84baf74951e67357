//! The `nn` build's decoder: the engine's [`Decoder`] over the host's wasi-nn
//! (`wasi:nn@0.2.0-rc-2024-10-28`, bindings from `wit/wasi-nn.wit`). The contract (tensor
//! names, shapes, limits) is documented in the host's `host/src/nn/mod.rs`:
//!
//! - `load-by-name(NAME)` with NAME = [`model_name`]; `init-execution-context` once per
//!   sequence, made on the first [`Decoder::feed`] (never during `wizer-initialize`, which
//!   cannot call imports);
//! - each `feed` is `compute([("tokens", I32 [n])])` with n ≤ [`MAX_CHUNK`] (longer inputs go in
//!   several computes) → `[("logits", FP32 [vocab])]`, copied into a buffer reused for every
//!   step, so memory per request stays constant;
//! - each `feed_greedy` (greedy sampling with nothing else reading the logits, see
//!   [`Decoder::feed_greedy`]) adds `("greedy", U8 [1] = n)` → `[("token", I32 [n])]`: the
//!   host's argmax, 4 bytes instead of the logits (on the GPU backend, computed there), and for
//!   n > 1 the n − 1 greedy tokens after it, which the host feeds back itself. n is what
//!   [`Decoder::plan_greedy`] allowed, at most [`MAX_GREEDY`]; the later feeds of those tokens
//!   take them from [`NnDecoder`]'s queue without a compute.
//! - when the text is streamed ([`Pace::Eager`]) and more than one greedy token is allowed,
//!   the compute also starts a greedy run of all of them (`("greedy-run", I32 [1] = r)`, at
//!   most [`MAX_GREEDY_RUN`]): the host goes on computing them while this guest streams what
//!   it has, and each later compute feeds the last token got and takes the 1..=n that are
//!   ready. So a stream neither waits for its guest nor arrives in bursts.
//! - greedy tokens, whole or in a run, end with the first end-of-generation token (unless the
//!   request says `ignore_eos`): the compute that starts them gives those as
//!   `("greedy-stop", I32 [k])`, so the host computes nothing past the end of the text.
//!
//! The state lives in the host, owned by the execution context; dropping the decoder (or the
//! instance) frees it.

use tinystate_engine::TokenId;
use tinystate_engine::generate::{Decoder, Pace};

use bindings::wasi::nn::inference::NamedTensor;

use crate::api::{ApiError, MODEL_ALIAS};

/// The wasi-nn imports, generated from the interface text.
mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../wit/wasi-nn.wit",
        world: "ml",
    });
}

use bindings::wasi::nn::errors::{Error as NnErr, ErrorCode};
use bindings::wasi::nn::graph::{self, Graph};
use bindings::wasi::nn::inference::GraphExecutionContext;
use bindings::wasi::nn::tensor::{Tensor, TensorType};

/// Most tokens per `compute` the host accepts (its `MAX_CHUNK`).
pub const MAX_CHUNK: usize = 512;
/// Most greedy tokens one `compute` may ask for (the host's `MAX_GREEDY`).
pub const MAX_GREEDY: usize = 64;
/// Most tokens of one greedy run (the host's `MAX_GREEDY_RUN`).
pub const MAX_GREEDY_RUN: usize = 1024;
/// Most stop tokens one compute may give (the host's `MAX_GREEDY_STOPS`).
pub const MAX_GREEDY_STOPS: usize = 8;

/// The host's environment variable listing its models, comma-separated, default first.
const MODELS_ENV: &str = "TINYSTATE_MODELS";

/// The host model this guest decodes with: the first name in `TINYSTATE_MODELS` (set by
/// `tinystate serve`, in `--model` order), else `default`.
pub fn model_name() -> String {
    std::env::var(MODELS_ENV)
        .ok()
        .and_then(|v| v.split(',').next().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| MODEL_ALIAS.to_owned())
}

/// A failed wasi-nn call: what was being done, the error code and the host's message.
#[derive(Debug, thiserror::Error)]
#[error("wasi-nn {what}: {code:?}: {message}")]
pub struct NnError {
    what: &'static str,
    code: ErrorCode,
    message: String,
}

impl NnError {
    fn from_wasi(what: &'static str, e: NnErr) -> Self {
        Self { what, code: e.code(), message: e.data() }
    }

    fn protocol(message: String) -> Self {
        Self { what: "compute", code: ErrorCode::RuntimeError, message }
    }
}

impl From<NnError> for ApiError {
    fn from(e: NnError) -> Self {
        match e.code {
            ErrorCode::NotFound => {
                ApiError::invalid(Some("model"), e.to_string()).with_code("model_not_found").with_status(404)
            }
            ErrorCode::TooLarge => ApiError::internal(e.to_string()).with_status(503),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

/// One sequence whose state lives in the host.
pub struct NnDecoder {
    ctx: Option<GraphExecutionContext>,
    /// The last logits (vocab,), reused.
    logits: Vec<f32>,
    /// The tokens of one compute as bytes, reused.
    bytes: Vec<u8>,
    /// Greedy tokens the host computed beyond `last`, each after the one before; the host's
    /// state has consumed `last` and all of them but the final one.
    ahead: std::collections::VecDeque<TokenId>,
    /// The greedy token returned last (what the next feed must be while `ahead` is not empty).
    last: TokenId,
    /// How many greedy tokens the next compute may ask for ([`Decoder::plan_greedy`]).
    plan: usize,
    /// At what pace ([`Decoder::greedy_pace`]).
    pace: Pace,
    /// Tokens of the greedy run under way that the host has not handed over yet.
    run_left: usize,
    /// The tokens greedy tokens end with ([`Decoder::greedy_pace`]), sent as `"greedy-stop"`.
    stops: Vec<TokenId>,
    /// The same as I32 bytes, reused.
    stop_bytes: Vec<u8>,
}

impl NnDecoder {
    /// A decoder that connects on first use.
    pub fn new() -> Self {
        Self {
            ctx: None,
            logits: Vec::new(),
            bytes: Vec::with_capacity(4 * MAX_CHUNK),
            ahead: std::collections::VecDeque::with_capacity(MAX_GREEDY),
            last: TokenId(0),
            plan: 1,
            pace: Pace::default(),
            run_left: 0,
            stops: Vec::with_capacity(MAX_GREEDY_STOPS),
            stop_bytes: Vec::with_capacity(4 * MAX_GREEDY_STOPS),
        }
    }

    /// Back to an empty sequence: the next feed starts a new context.
    pub fn reset(&mut self) {
        self.ctx = None;
        self.ahead.clear();
        self.plan = 1;
        self.run_left = 0;
    }

    /// Loads the model and makes this sequence's context, if not done yet.
    pub fn connect(&mut self) -> Result<&GraphExecutionContext, NnError> {
        if self.ctx.is_none() {
            let g: Graph =
                graph::load_by_name(&model_name()).map_err(|e| NnError::from_wasi("load-by-name", e))?;
            let ctx =
                g.init_execution_context().map_err(|e| NnError::from_wasi("init-execution-context", e))?;
            self.ctx = Some(ctx);
        }
        self.ctx.as_ref().ok_or_else(|| NnError::protocol("no execution context".into()))
    }

    /// One compute of at most [`MAX_CHUNK`] tokens, with the `"greedy"` input `greedy` and the
    /// `"greedy-run"` input `run` where not 0, and with `stop` the stop tokens as `"greedy-stop"`;
    /// returns the outputs.
    fn compute(
        &mut self,
        tokens: &[TokenId],
        greedy: u8,
        run: u32,
        stop: bool,
    ) -> Result<Vec<NamedTensor>, NnError> {
        self.bytes.clear();
        self.bytes.extend(tokens.iter().flat_map(|t| t.0.to_le_bytes()));
        let mut inputs =
            vec![("tokens".to_owned(), Tensor::new(&[tokens.len() as u32], TensorType::I32, &self.bytes))];
        if greedy > 0 {
            inputs.push(("greedy".to_owned(), Tensor::new(&[1], TensorType::U8, &[greedy])));
        }
        if run > 0 {
            inputs.push(("greedy-run".to_owned(), Tensor::new(&[1], TensorType::I32, &run.to_le_bytes())));
        }
        // The stop tokens go with a compute that starts the text's greedy tokens (`stop`); a run
        // keeps its own.
        if stop && greedy > 0 && !self.stops.is_empty() {
            self.stop_bytes.clear();
            self.stop_bytes.extend(self.stops.iter().flat_map(|t| t.0.to_le_bytes()));
            let dims = [self.stops.len() as u32];
            inputs.push(("greedy-stop".to_owned(), Tensor::new(&dims, TensorType::I32, &self.stop_bytes)));
        }
        let ctx = self.connect()?;
        ctx.compute(inputs).map_err(|e| NnError::from_wasi("compute", e))
    }

    /// One compute for the logits; they land in `self.logits`.
    fn compute_logits(&mut self, tokens: &[TokenId]) -> Result<(), NnError> {
        let t = output(self.compute(tokens, 0, 0, false)?, "logits")?;
        if t.ty() != TensorType::Fp32 {
            return Err(NnError::protocol("the host's 'logits' are not FP32".into()));
        }
        let data = t.data();
        if data.is_empty() || data.len() % 4 != 0 {
            return Err(NnError::protocol(format!("'logits' hold {} bytes", data.len())));
        }
        self.logits.clear();
        self.logits.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Ok(())
    }

    /// One compute for `n` (1..=[`MAX_GREEDY`]) greedy tokens, starting a run of `run` if not
    /// 0, with the stop tokens if `stop`: returns the first, queues the others in `ahead`. In a
    /// run (started now or before) the host may return fewer (at least one), and so it does
    /// when a stop token ends them; returns how many came.
    fn compute_tokens(
        &mut self,
        tokens: &[TokenId],
        n: usize,
        run: usize,
        stop: bool,
    ) -> Result<(TokenId, usize), NnError> {
        let in_run = run > 0 || self.run_left > 0;
        let t = output(self.compute(tokens, n as u8, run as u32, stop)?, "token")?;
        let data = t.data();
        let k = data.len() / 4;
        let ids = || data.chunks_exact(4).map(|b| TokenId(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        let ends_at_stop = stop && ids().next_back().is_some_and(|id| self.stops.contains(&id));
        let count_ok = k == n || (in_run || ends_at_stop) && (1..=n).contains(&k);
        // Non-negative as I32s: the host's ids are below the vocabulary size.
        if t.ty() != TensorType::I32 || data.len() % 4 != 0 || !count_ok || ids().any(|id| id.0 >= 1 << 31) {
            return Err(NnError::protocol(format!(
                "the host's 'token' is {:?} of {} bytes, not {} non-negative I32s",
                t.ty(),
                data.len(),
                if in_run { format!("1 to {n}") } else { n.to_string() }
            )));
        }
        let mut ids = ids();
        let first = ids.next().ok_or_else(|| NnError::protocol("no greedy token".into()))?;
        self.ahead.extend(ids);
        self.last = first;
        Ok((first, k))
    }
}

/// The output called `name`.
fn output(outputs: Vec<NamedTensor>, name: &str) -> Result<Tensor, NnError> {
    outputs
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| NnError::protocol(format!("the host returned no '{name}' output")))
}

impl Default for NnDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for NnDecoder {
    type Error = NnError;

    fn feed(&mut self, tokens: &[TokenId]) -> Result<&mut [f32], NnError> {
        if tokens.is_empty() {
            return Err(NnError::protocol("no tokens to feed".into()));
        }
        if !self.ahead.is_empty() || self.run_left > 0 {
            return Err(NnError::protocol("logits asked for while the host had run ahead greedily".into()));
        }
        for chunk in tokens.chunks(MAX_CHUNK) {
            self.compute_logits(chunk)?;
        }
        Ok(&mut self.logits)
    }

    fn feed_greedy(&mut self, tokens: &[TokenId]) -> Result<TokenId, NnError> {
        let ran_ahead = !self.ahead.is_empty() || self.run_left > 0;
        if ran_ahead && tokens != [self.last] {
            return Err(NnError::protocol(format!(
                "fed {tokens:?} after greedy token {} while the host had run ahead",
                self.last
            )));
        }
        if let Some(next) = self.ahead.pop_front() {
            // The host ran ahead: its state has taken `last` already.
            self.last = next;
            return Ok(next);
        }
        if self.run_left > 0 {
            // The run's next tokens, which the host may have computed already.
            let (first, k) = self.compute_tokens(tokens, self.run_left.min(MAX_GREEDY), 0, false)?;
            self.run_left -= k;
            return Ok(first);
        }
        let most = std::mem::replace(&mut self.plan, 1).max(1);
        let n = most.min(MAX_GREEDY);
        let run = if self.pace == Pace::Eager && most > 1 { most.min(MAX_GREEDY_RUN) } else { 0 };
        // Chunks before the last run as prefill; the last asks for the greedy tokens.
        let mut chunks = tokens.chunks(MAX_CHUNK);
        let last = chunks.next_back().ok_or_else(|| NnError::protocol("no tokens to feed".into()))?;
        for chunk in chunks {
            self.compute_tokens(chunk, 1, 0, false)?;
        }
        let (first, k) = self.compute_tokens(last, n, run, true)?;
        self.run_left = run.saturating_sub(k);
        Ok(first)
    }

    fn greedy_pace(&mut self, pace: Pace, stops: &[TokenId]) {
        self.pace = pace;
        // More than the host takes: none are sent, and the tokens go on past them (the caller
        // still stops there).
        self.stops.clear();
        if stops.len() <= MAX_GREEDY_STOPS {
            self.stops.extend_from_slice(stops);
        }
    }

    fn plan_greedy(&mut self, most: usize) {
        self.plan = most;
    }

    fn vocab(&self) -> usize {
        self.logits.len()
    }
}
