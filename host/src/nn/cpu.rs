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
    /// with `greedy` their argmax.
    pub async fn compute(&mut self, tokens: Vec<TokenId>, greedy: bool) -> Result<Output, NnError> {
        let mut seq = self
            .seq
            .take()
            .ok_or_else(|| NnError::Backend("this context's state was lost by an earlier failure".into()))?;
        let model = self.model.clone();
        let (seq, output) = tokio::task::spawn_blocking(move || {
            let Sequence { state, scratch } = &mut *seq;
            let output = model.model.forward(state, scratch, &tokens, true).map(|l| match greedy {
                true => Output::Token(argmax(l)),
                false => Output::Logits(logits_bytes(l)),
            });
            (seq, output)
        })
        .await
        .map_err(|e| NnError::Backend(format!("CPU task: {e}")))?;
        self.seq = Some(seq);
        output.ok_or(NnError::Empty)
    }
}
