//! The generation loop shared by the CLI and the wasm guest:
//! prompt tokens → prefill → { sample → detokenise → check stops → feed } until a stop.
//!
//! The heavy math sits behind [`Decoder`], so the same loop drives the in-process engine
//! ([`CpuDecoder`]) and, in the guest's `nn` build, the host's wasi-nn backend. The loop itself
//! holds only fixed-size buffers: its memory does not grow with the prompt or the output.

use crate::TokenId;
use crate::arch::mamba::{Mamba, Scratch, State};
use crate::sampler::{Sampler, SamplerConfig, StopMatcher, argmax};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Something that turns tokens into next-token logits while keeping one sequence's state.
pub trait Decoder {
    /// Why a step failed.
    type Error: std::error::Error + 'static;
    /// Feeds `tokens` (a prefill chunk, or one token when decoding) and returns the logits
    /// (vocab,) of the last one.
    fn feed(&mut self, tokens: &[TokenId]) -> Result<&mut [f32], Self::Error>;
    /// Feeds `tokens` like [`Decoder::feed`] and returns only the greedy token after the last
    /// one ([`argmax`] of the logits): what the sampler picks when
    /// [`SamplerConfig::picks_argmax`]. This default takes it from `feed`'s logits; a decoder
    /// that can get it without them (the host's wasi-nn) overrides it.
    fn feed_greedy(&mut self, tokens: &[TokenId]) -> Result<TokenId, Self::Error> {
        Ok(argmax(self.feed(tokens)?))
    }
    /// Says, once per sequence before its greedy tokens, at what [`Pace`] the caller takes
    /// them and that it takes none after any of `stops` (end-of-generation tokens). A decoder
    /// that computes greedy tokens ahead (the host's wasi-nn) uses it; others ignore it.
    fn greedy_pace(&mut self, pace: Pace, stops: &[TokenId]) {
        let _ = (pace, stops);
    }
    /// Says that the caller may take up to `most` greedy tokens from here on, the next
    /// [`Decoder::feed_greedy`]'s included, each fed back in turn. A decoder that computes greedy
    /// tokens ahead (the host's wasi-nn) uses it so as not to compute past the end; others
    /// ignore it.
    fn plan_greedy(&mut self, most: usize) {
        let _ = most;
    }
    /// Vocabulary size.
    fn vocab(&self) -> usize;
}

/// How a caller wants the greedy tokens a decoder computes ahead ([`Decoder::greedy_pace`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pace {
    /// Each as soon as it is ready: the text is streamed.
    Eager,
    /// In as few round trips as possible: the text is sent whole.
    #[default]
    Batched,
}

/// A token id outside the vocabulary was given to a decoder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The id is not below the vocabulary size.
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The offending id.
        token: TokenId,
        /// The vocabulary size.
        vocab: usize,
    },
    /// Nothing to feed.
    #[error("no tokens to feed")]
    Empty,
}

/// The engine in-process: a model, one sequence's state and its working memory.
pub struct CpuDecoder<'m, 'a> {
    model: &'m Mamba<'a>,
    state: State,
    scratch: Scratch,
}

impl<'m, 'a> CpuDecoder<'m, 'a> {
    /// A fresh sequence over `model`, prefilling up to `max_chunk` tokens per pass.
    pub fn new(model: &'m Mamba<'a>, max_chunk: usize) -> Self {
        Self { model, state: State::new(&model.config), scratch: Scratch::new(&model.config, max_chunk) }
    }

    /// Back to an empty sequence.
    pub fn reset(&mut self) {
        self.state.reset();
    }

    /// The sequence's recurrent state.
    pub fn state(&self) -> &State {
        &self.state
    }
}

impl Decoder for CpuDecoder<'_, '_> {
    type Error = DecodeError;

    fn feed(&mut self, tokens: &[TokenId]) -> Result<&mut [f32], DecodeError> {
        self.model
            .check_tokens(tokens)
            .map_err(|token| DecodeError::TokenOutOfRange { token, vocab: self.model.config.vocab })?;
        self.model.forward(&mut self.state, &mut self.scratch, tokens, true).ok_or(DecodeError::Empty)
    }

    fn vocab(&self) -> usize {
        self.model.config.vocab
    }
}

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What one generation call asks for.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to produce.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Stop sequences: text ends before the first match.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (for benchmarks).
    pub ignore_eos: bool,
}

/// One produced token and the text it releases.
#[derive(Debug)]
pub struct Produced<'g> {
    /// The sampled token.
    pub token: TokenId,
    /// Text now safe to show (whole UTF-8 characters, not part of a possible stop sequence).
    pub text: &'g str,
    /// Set when this is the last event.
    pub finish: Option<FinishReason>,
}

/// The sampling half of the loop: logits in, text out. Holds only fixed-size buffers.
pub struct Generator<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    detok: StreamDecoder,
    stop: StopMatcher,
    recent: Recent,
    max_tokens: usize,
    produced: usize,
    ignore_eos: bool,
    out: String,
}

impl<'t> Generator<'t> {
    /// A generator for `params` over `tokenizer`'s vocabulary of `vocab` logits.
    pub fn new(tokenizer: &'t Tokenizer, vocab: usize, params: &GenerateParams) -> Self {
        Self {
            tokenizer,
            sampler: Sampler::new(params.sampler.clone(), vocab),
            detok: StreamDecoder::new(),
            stop: StopMatcher::new(params.stop.clone()),
            recent: Recent::new(params.sampler.repeat_last_n),
            max_tokens: params.max_tokens,
            produced: 0,
            ignore_eos: params.ignore_eos,
            out: String::new(),
        }
    }

    /// Remembers prompt tokens for the repetition penalty.
    pub fn observe_prompt(&mut self, tokens: &[TokenId]) {
        tokens.iter().for_each(|&t| self.recent.push(t));
    }

    /// Tokens produced so far.
    pub fn produced(&self) -> usize {
        self.produced
    }

    /// Whether [`Generator::next`] needs the logits: false when sampling is greedy with no
    /// repetition penalty ([`SamplerConfig::picks_argmax`]), so the decoder may hand over only
    /// the argmax ([`Decoder::feed_greedy`]) and [`Generator::next_token`] takes it.
    pub fn needs_logits(&self) -> bool {
        !self.sampler.config().picks_argmax()
    }

    /// Samples the next token from `logits` and returns it with the text it releases. After an
    /// event with `finish` set, stop calling.
    pub fn next(&mut self, logits: &mut [f32]) -> Produced<'_> {
        let token = self.sampler.sample(logits, self.recent.as_slice());
        self.next_token(token)
    }

    /// Takes `token` as the next one, chosen without the sampler (the decoder's argmax when
    /// [`Generator::needs_logits`] is false, which is what [`Generator::next`] would pick), and
    /// returns the text it releases, as [`Generator::next`].
    pub fn next_token(&mut self, token: TokenId) -> Produced<'_> {
        self.recent.push(token);
        self.produced += 1;
        self.out.clear();
        let eog = !self.ignore_eos && self.tokenizer.is_eog(token);
        let piece = if eog { "" } else { self.detok.push(self.tokenizer, token) };
        let r = self.stop.push(piece);
        self.out.push_str(r.text);
        if r.stopped {
            return Produced { token, text: &self.out, finish: Some(FinishReason::Stop) };
        }
        if !eog && self.produced < self.max_tokens {
            return Produced { token, text: &self.out, finish: None };
        }
        // Last token: release what the detokeniser and the stop matcher hold back.
        let r = self.stop.push(self.detok.finish());
        self.out.push_str(r.text);
        let stopped = r.stopped;
        if !stopped {
            self.out.push_str(self.stop.finish());
        }
        let finish = if eog || stopped { FinishReason::Stop } else { FinishReason::Length };
        Produced { token, text: &self.out, finish: Some(finish) }
    }
}

/// The last `cap` tokens, for the repetition penalty; fixed size.
struct Recent {
    buf: Vec<TokenId>,
    cap: usize,
}

impl Recent {
    fn new(cap: usize) -> Self {
        Self { buf: Vec::with_capacity(2 * cap.max(1)), cap }
    }

    fn push(&mut self, t: TokenId) {
        if self.cap == 0 {
            return;
        }
        // Amortised O(1) without a ring: slide the window back when the buffer fills.
        if self.buf.len() == 2 * self.cap {
            self.buf.drain(..self.cap);
        }
        self.buf.push(t);
    }

    fn as_slice(&self) -> &[TokenId] {
        &self.buf[self.buf.len().saturating_sub(self.cap)..]
    }
}
