//! The CPU backend: the engine's Mamba on the host's cores. Each context owns a sequence state
//! and its scratch; `compute` moves them onto tokio's blocking pool, runs the chunk there (the
//! engine's matrix products use the rayon pool, so a chunk uses every core and many requests
//! share them), and takes them back. If the guest goes away mid-compute the result is dropped
//! with the state. A greedy compute takes the argmax of the logits there too, with the
//! sampler's rule ([`argmax`]).

use std::sync::Arc;

use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::{DEFAULT_MAX_CHUNK, Mamba, Scratch, State};
use tinystate_engine::sampler::argmax;

use super::NnError;
use super::contract::{Output, logits_bytes};

/// A model's weights (views into the mapped file) for the CPU backend.
pub struct CpuModel {
    model: Mamba<'static>,
}

impl CpuModel {
    /// Wraps a loaded model.
    pub fn new(model: Mamba<'static>) -> Self {
        Self { model }
    }
}

/// One sequence: (recurrent state, working memory for chunks of [`DEFAULT_MAX_CHUNK`]).
struct Sequence {
    state: State,
    scratch: Scratch,
}

/// A CPU execution context.
pub struct CpuContext {
    model: Arc<CpuModel>,
    /// `None` only while a compute runs (or after one was lost).
    seq: Option<Box<Sequence>>,
}

impl CpuContext {
    /// A fresh sequence.
    pub fn new(model: Arc<CpuModel>) -> Self {
        let c = &model.model.config;
        let seq = Sequence { state: State::new(c), scratch: Scratch::new(c, DEFAULT_MAX_CHUNK) };
        Self { model, seq: Some(Box::new(seq)) }
    }

    /// Runs `tokens` (already checked against the vocabulary) and returns the last logits, or
    /// with `greedy` n ≥ 1 their argmax and the n − 1 greedy tokens after it, each fed back,
    /// ending early with the first of `stop`.
    pub async fn compute(
        &mut self,
        tokens: Vec<TokenId>,
        greedy: u32,
        stop: &[TokenId],
    ) -> Result<Output, NnError> {
        let stop = stop.to_vec();
        let mut seq = self
            .seq
            .take()
            .ok_or_else(|| NnError::Backend("this context's state was lost by an earlier failure".into()))?;
        let model = self.model.clone();
        let (seq, output) = tokio::task::spawn_blocking(move || {
            let Sequence { state, scratch } = &mut *seq;
            let output = match greedy {
                0 => model
                    .model
                    .forward(state, scratch, &tokens, true)
                    .map(|l| Output::Logits(logits_bytes(l))),
                n => greedy_run(&model.model, (state, scratch), &tokens, n, &stop).map(Output::Tokens),
            };
            (seq, output)
        })
        .await
        .map_err(|e| NnError::Backend(format!("CPU task: {e}")))?;
        self.seq = Some(seq);
        output.ok_or(NnError::Empty)
    }
}

/// The greedy token after `tokens`, then `n` − 1 more, each fed back before the next, ending
/// early with the first token in `stop`; None if `tokens` is empty.
fn greedy_run(
    model: &Mamba<'_>,
    (state, scratch): (&mut State, &mut Scratch),
    tokens: &[TokenId],
    n: u32,
    stop: &[TokenId],
) -> Option<Vec<TokenId>> {
    let mut out = vec![argmax(model.forward(state, scratch, tokens, true)?)];
    while out.len() < n as usize {
        let last = out[out.len() - 1];
        if stop.contains(&last) {
            break;
        }
        out.push(argmax(model.forward(state, scratch, &[last], true)?));
    }
    Some(out)
}
