//! The prompt, from text arriving in pieces to the state after prefill, in constant memory.
//!
//! Text goes through [`StreamEncoder`] (which holds back at most the last pre-token piece);
//! tokens collect in `pending` and whole chunks of [`DEFAULT_MAX_CHUNK`] are run through the
//! model as soon as they are known, always keeping the last token back so the final chunk
//! yields the logits. So memory holds the recurrent state, the chunk scratch, one piece of text
//! and at most a chunk plus one piece's tokens, whatever the prompt's length.

use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::{DEFAULT_MAX_CHUNK, Scratch, State};
use tinystate_engine::generate::{FinishReason, GenerateParams, Generator};
use tinystate_engine::tokenizer::StreamEncoder;

use crate::api::{ApiError, MAX_PROMPT_TOKENS};
use crate::model::Engine;

/// Prompt tokens kept for the repetition penalty (at least `repeat_last_n`).
const RECENT: usize = 64;

/// One sequence: the prompt being read, then the generation.
pub struct Sequence {
    e: &'static Engine,
    enc: StreamEncoder,
    /// Tokens not yet run through the model (the last one always waits for [`Sequence::finish`]).
    pending: Vec<TokenId>,
    /// The last prompt tokens, oldest first (at most 2 × [`RECENT`]).
    recent: Vec<TokenId>,
    /// (recurrent state) per layer: conv window and SSM state.
    state: State,
    /// Working memory for chunks of up to [`DEFAULT_MAX_CHUNK`] tokens.
    scratch: Scratch,
    tokens: usize,
    bytes: u64,
    error: Option<ApiError>,
}

impl Sequence {
    /// An empty sequence; `parse_special` as in `Tokenizer::encode` (chat prompts set it).
    pub fn new(e: &'static Engine, parse_special: bool) -> Self {
        let c = &e.model.config;
        let mut s = Self {
            e,
            enc: StreamEncoder::new(parse_special),
            pending: Vec::with_capacity(2 * DEFAULT_MAX_CHUNK),
            recent: Vec::with_capacity(2 * RECENT),
            state: State::new(c),
            scratch: Scratch::new(c, DEFAULT_MAX_CHUNK),
            tokens: 0,
            bytes: 0,
            error: None,
        };
        if let (true, Some(bos)) = (e.tokenizer.add_bos(), e.tokenizer.bos()) {
            s.pending.push(bos);
            s.tokens = 1;
            s.recent.push(bos);
        }
        s
    }

    /// Adds prompt text (a piece of UTF-8, split anywhere). After an error (too many tokens)
    /// further text is ignored and [`Sequence::finish`] reports it.
    pub fn push(&mut self, text: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.bytes += text.len() as u64;
        let before = self.pending.len();
        self.enc.push(&self.e.tokenizer, text, &mut self.pending);
        self.took(before);
    }

    fn took(&mut self, before: usize) {
        let new = &self.pending[before..];
        self.tokens += new.len();
        for &t in new.iter().rev().take(RECENT).rev() {
            if self.recent.len() == 2 * RECENT {
                self.recent.drain(..RECENT);
            }
            self.recent.push(t);
        }
        if self.tokens > MAX_PROMPT_TOKENS {
            self.error = Some(
                ApiError::invalid(Some("prompt"), format!("the prompt has more than {MAX_PROMPT_TOKENS} tokens"))
                    .with_code("context_length_exceeded"),
            );
            return;
        }
        // Run whole chunks, keeping at least one token back.
        let ready = (self.pending.len().saturating_sub(1) / DEFAULT_MAX_CHUNK) * DEFAULT_MAX_CHUNK;
        if ready > 0 {
            self.e.model.forward(&mut self.state, &mut self.scratch, &self.pending[..ready], false);
            self.pending.drain(..ready);
        }
    }

    /// Ends the prompt and runs what is left of it.
    pub fn finish(&mut self) -> Result<Usage, ApiError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.bytes == 0 {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        let before = self.pending.len();
        self.enc.finish(&self.e.tokenizer, &mut self.pending);
        self.took(before);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.pending.is_empty() {
            return Err(ApiError::invalid(Some("prompt"), "the prompt encodes to no tokens"));
        }
        Ok(Usage { prompt: self.tokens })
    }

    /// Prompt tokens so far (including BOS).
    pub fn prompt_tokens(&self) -> usize {
        self.tokens
    }

    /// Prompt bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Generates after [`Sequence::finish`]: `each(text, finish)` gets every piece of text; it
    /// returns `Err` to stop early (client gone). Returns the finish reason and the number of
    /// tokens generated.
    pub fn generate(
        &mut self,
        params: &GenerateParams,
        mut each: impl FnMut(&str, Option<FinishReason>) -> Result<(), ()>,
    ) -> (FinishReason, usize) {
        let e = self.e;
        let mut generator = Generator::new(&e.tokenizer, e.model.config.vocab, params);
        generator.observe_prompt(&self.recent);
        let last = std::mem::take(&mut self.pending);
        let Some(mut logits) = e.model.forward(&mut self.state, &mut self.scratch, &last, true) else {
            return (FinishReason::Stop, 0);
        };
        loop {
            let p = generator.next(logits);
            let (token, finish) = (p.token, p.finish);
            if each(p.text, finish).is_err() {
                return (finish.unwrap_or(FinishReason::Stop), generator.produced());
            }
            if let Some(f) = finish {
                return (f, generator.produced());
            }
            match e.model.forward(&mut self.state, &mut self.scratch, &[token], true) {
                Some(l) => logits = l,
                None => return (FinishReason::Stop, generator.produced()),
            }
        }
    }
}

/// Prompt size after [`Sequence::finish`].
pub struct Usage {
    /// Prompt tokens.
    pub prompt: usize,
}
