//! The prompt, from text arriving in pieces to the state after prefill, in constant memory.
//!
//! Text goes through [`StreamEncoder`] (which holds back at most the last pre-token piece);
//! tokens collect in `pending` and whole chunks of [`DEFAULT_MAX_CHUNK`] are run through the
//! model as soon as they are known, always keeping the last token back so the final chunk
//! yields the logits. So memory holds the decoder (recurrent state and chunk scratch, or in the
//! `nn` build a handle to the host's), one piece of text, one logits vector and at most a chunk
//! plus one piece's tokens, whatever the prompt's length.
//!
//! Greedy requests without a repetition penalty ([`SamplerConfig::picks_argmax`]) never look
//! at the logits: the final chunk and every generated token are fed with
//! [`Decoder::feed_greedy`], which in the `nn` build asks the host for only the token (4 bytes
//! instead of the vocabulary's logits) and in the embedded build takes the argmax of the
//! engine's logits; either way the text is the one the sampler would give.
//!
//! [`SamplerConfig::picks_argmax`]: tinystate_engine::sampler::SamplerConfig::picks_argmax

use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::DEFAULT_MAX_CHUNK;
use tinystate_engine::generate::{Decoder, FinishReason, GenerateParams, Generator, Pace};
use tinystate_engine::tokenizer::StreamEncoder;

use crate::api::{ApiError, MAX_PROMPT_TOKENS};
use crate::json_stream::OUT_CHUNK;
use crate::model::{Dec, Engine};

/// A sequence built and warmed up before the snapshot (see [`Sequence::prepare_spare`]): each
/// instance takes it from its own copy of memory, so a request allocates no state or scratch
/// and its buffers already have the capacity the largest text piece needs.
static SPARE: std::sync::Mutex<Option<Sequence>> = std::sync::Mutex::new(None);

/// Prompt tokens kept for the repetition penalty (at least `repeat_last_n`).
const RECENT: usize = 64;

/// One sequence: the prompt being read, then the generation.
pub struct Sequence {
    e: &'static Engine,
    /// Encoders without and with special-token parsing; `special` picks one.
    enc: [StreamEncoder; 2],
    special: bool,
    /// Tokens not yet run through the model (the last one always waits for [`Sequence::finish`]).
    pending: Vec<TokenId>,
    /// The last prompt tokens, oldest first (at most 2 × [`RECENT`]).
    recent: Vec<TokenId>,
    /// The model's side: recurrent state and working memory (or the host's, `nn`).
    dec: Dec,
    /// Logits (vocab,) after the prompt's last token, set by [`Sequence::finish`] unless it
    /// took the greedy token instead.
    logits: Vec<f32>,
    /// The greedy token after the prompt's last token, when [`Sequence::finish`] took it.
    first: Option<TokenId>,
    tokens: usize,
    bytes: u64,
    error: Option<ApiError>,
}

impl Sequence {
    /// An empty sequence; `parse_special` as in `Tokenizer::encode` (chat prompts set it).
    pub fn new(e: &'static Engine, parse_special: bool) -> Self {
        let spare = SPARE.lock().ok().and_then(|mut s| s.take());
        let mut s = spare.unwrap_or_else(|| Self::warmed(e));
        s.reset(parse_special);
        s
    }

    /// Builds the spare sequence that [`Sequence::new`] hands out (run before the snapshot).
    pub fn prepare_spare(e: &'static Engine) {
        if let Ok(mut spare) = SPARE.lock() {
            *spare = Some(Self::warmed(e));
        }
    }

    /// A sequence whose encoders have already taken pieces of [`OUT_CHUNK`] bytes, so their
    /// buffers do not grow with the first request's piece sizes.
    fn warmed(e: &'static Engine) -> Self {
        let mut s = Self {
            e,
            enc: [StreamEncoder::new(false), StreamEncoder::new(true)],
            special: false,
            pending: Vec::with_capacity(2 * DEFAULT_MAX_CHUNK + OUT_CHUNK),
            recent: Vec::with_capacity(2 * RECENT),
            dec: e.decoder(),
            logits: Vec::with_capacity(e.tokenizer.vocab_size()),
            first: None,
            tokens: 0,
            bytes: 0,
            error: None,
        };
        // A long unbroken run (held back as one piece), then a full piece of short words.
        let run = "x".repeat(OUT_CHUNK);
        let words = "ab ".repeat(OUT_CHUNK / 3);
        for enc in &mut s.enc {
            let mut out = Vec::new();
            enc.push(&e.tokenizer, run.as_bytes(), &mut out);
            enc.push(&e.tokenizer, words.as_bytes(), &mut out);
            enc.push(&e.tokenizer, run.as_bytes(), &mut out);
            enc.finish(&e.tokenizer, &mut out);
        }
        s
    }

    /// Back to an empty prompt.
    fn reset(&mut self, parse_special: bool) {
        self.special = parse_special;
        self.dec.reset();
        self.pending.clear();
        self.recent.clear();
        self.logits.clear();
        self.first = None;
        self.tokens = 0;
        self.bytes = 0;
        self.error = None;
        if let (true, Some(bos)) = (self.e.tokenizer.add_bos(), self.e.tokenizer.bos()) {
            self.pending.push(bos);
            self.tokens = 1;
            self.recent.push(bos);
        }
    }

    /// Adds prompt text (a piece of UTF-8, split anywhere). After an error (too many tokens)
    /// further text is ignored and [`Sequence::finish`] reports it.
    pub fn push(&mut self, text: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.bytes += text.len() as u64;
        let before = self.pending.len();
        self.enc[usize::from(self.special)].push(&self.e.tokenizer, text, &mut self.pending);
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
                ApiError::invalid(
                    Some("prompt"),
                    format!("the prompt has more than {MAX_PROMPT_TOKENS} tokens"),
                )
                .with_code("context_length_exceeded"),
            );
            return;
        }
        // Run whole chunks, keeping at least one token back.
        let ready = (self.pending.len().saturating_sub(1) / DEFAULT_MAX_CHUNK) * DEFAULT_MAX_CHUNK;
        if ready > 0 {
            if let Err(e) = self.dec.feed(&self.pending[..ready]) {
                self.error = Some(e.into());
                return;
            }
            self.pending.drain(..ready);
        }
    }

    /// Ends the prompt and runs what is left of it, for generating with `params` (greedy ones
    /// take only the next token, not the logits) at `pace` (streamed text: [`Pace::Eager`]).
    pub fn finish(&mut self, params: &GenerateParams, pace: Pace) -> Result<Usage, ApiError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.bytes == 0 {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        let before = self.pending.len();
        self.enc[usize::from(self.special)].finish(&self.e.tokenizer, &mut self.pending);
        self.took(before);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.pending.is_empty() {
            return Err(ApiError::invalid(Some("prompt"), "the prompt encodes to no tokens"));
        }
        if params.sampler.picks_argmax() {
            // End of generation is where greedy tokens stop, unless the request ignores it.
            let stops: &[TokenId] = if params.ignore_eos { &[] } else { &self.e.eog };
            self.dec.greedy_pace(pace, stops);
            self.dec.plan_greedy(params.max_tokens);
            self.first = Some(self.dec.feed_greedy(&self.pending)?);
        } else {
            let logits = self.dec.feed(&self.pending)?;
            self.logits.clear();
            self.logits.extend_from_slice(logits);
        }
        self.pending.clear();
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

    /// Generates after [`Sequence::finish`] (given the same `params`): `each(text, finish)`
    /// gets every piece of text; it returns `Err` to stop early (client gone). Returns the
    /// finish reason and the number of tokens generated, or why decoding failed. When greedy,
    /// the decoder learns how many tokens are left at each step ([`Decoder::plan_greedy`]): the
    /// `nn` build's host computes them ahead, at the pace `finish` gave.
    pub fn generate(
        &mut self,
        params: &GenerateParams,
        mut each: impl FnMut(&str, Option<FinishReason>) -> Result<(), ()>,
    ) -> Result<(FinishReason, usize), ApiError> {
        let e = self.e;
        // No logits when finish took the greedy token: the sampler never runs, so it gets no
        // buffers either.
        let mut generator = Generator::new(&e.tokenizer, self.logits.len(), params);
        generator.observe_prompt(&self.recent);
        if generator.needs_logits() == self.first.is_some() {
            return Err(ApiError::internal("the prompt was finished for other sampling settings"));
        }
        // Greedy: only tokens cross from the decoder; otherwise the logits, sampled here.
        let mut next = match self.first.take() {
            Some(t) => Next::Token(t),
            None => Next::Logits(&mut self.logits),
        };
        loop {
            let greedy = matches!(next, Next::Token(_));
            let p = match next {
                Next::Token(t) => generator.next_token(t),
                Next::Logits(logits) => generator.next(logits),
            };
            let (token, finish) = (p.token, p.finish);
            if each(p.text, finish).is_err() {
                return Ok((finish.unwrap_or(FinishReason::Stop), generator.produced()));
            }
            if let Some(f) = finish {
                return Ok((f, generator.produced()));
            }
            next = match greedy {
                true => {
                    self.dec.plan_greedy(params.max_tokens.saturating_sub(generator.produced()));
                    Next::Token(self.dec.feed_greedy(&[token])?)
                }
                false => Next::Logits(self.dec.feed(&[token])?),
            };
        }
    }
}

/// What the decoder gave for the next token: the greedy token itself, or the logits to sample.
enum Next<'a> {
    Token(TokenId),
    Logits(&'a mut [f32]),
}

/// Prompt size after [`Sequence::finish`].
#[derive(Debug)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinystate_engine::generate::GenerateParams;
    use tinystate_engine::sampler::SamplerConfig;

    fn greedy(n: usize) -> GenerateParams {
        GenerateParams {
            max_tokens: n,
            sampler: SamplerConfig { temperature: 0.0, ..SamplerConfig::default() },
            stop: Vec::new(),
            ignore_eos: true,
        }
    }

    /// Runs `text` (repeated `times`) through a sequence in pieces of `piece` bytes and
    /// generates `n` tokens.
    fn run_repeated(text: &str, times: usize, piece: usize, n: usize) -> (usize, String) {
        let e = crate::model::engine().unwrap();
        let mut seq = Sequence::new(e, false);
        for _ in 0..times {
            for p in text.as_bytes().chunks(piece) {
                seq.push(p);
            }
        }
        let params = greedy(n);
        let usage = seq.finish(&params, Pace::Batched).unwrap();
        let mut out = String::new();
        let (_, produced) = seq
            .generate(&params, |t, _| {
                out.push_str(t);
                Ok(())
            })
            .unwrap();
        assert_eq!(produced, n);
        (usage.prompt, out)
    }

    fn run(text: &str, piece: usize, n: usize) -> (usize, String) {
        run_repeated(text, 1, piece, n)
    }

    #[test]
    fn chunked_prompt_matches_whole_encode() {
        let e = crate::model::engine().unwrap();
        let text = "Once upon a time, in a land far away, there lived a tiny model. ".repeat(20);
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (e.tokenizer.add_bos(), e.tokenizer.bos()) {
            ids.push(bos);
        }
        e.tokenizer.encode(&text, false, &mut ids);
        let (n1, out1) = run(&text, 7, 8);
        let (n2, out2) = run(&text, 100_000, 8);
        assert_eq!((n1, &out1), (ids.len(), &out2));
        assert_eq!(n2, ids.len());
    }

    #[test]
    fn empty_and_oversized_prompts() {
        let e = crate::model::engine().unwrap();
        let mut seq = Sequence::new(e, false);
        assert_eq!(seq.finish(&greedy(1), Pace::Batched).unwrap_err().param, Some("prompt"));
    }

    /// Generates `n` tokens after `text` with `params`; the text and the tokens' count.
    fn generate_with(text: &str, params: &GenerateParams) -> (String, usize) {
        let e = crate::model::engine().unwrap();
        let mut seq = Sequence::new(e, false);
        seq.push(text.as_bytes());
        seq.finish(params, Pace::Batched).unwrap();
        let mut out = String::new();
        let (_, n) = seq
            .generate(params, |t, _| {
                out.push_str(t);
                Ok(())
            })
            .unwrap();
        (out, n)
    }

    /// Greedy sampling takes the decoder's argmax instead of the logits; top-k 1 at
    /// temperature 1 samples from the logits and must pick the same tokens.
    #[test]
    fn greedy_argmax_path_gives_the_sampled_text() {
        let fast = greedy(24);
        let mut sampled = greedy(24);
        sampled.sampler.temperature = 1.0;
        sampled.sampler.top_k = 1;
        assert!(fast.sampler.picks_argmax() && !sampled.sampler.picks_argmax());
        for prompt in ["Once upon a time", "The quick brown fox", "1, 2, 3,"] {
            let (a, na) = generate_with(prompt, &fast);
            let (b, nb) = generate_with(prompt, &sampled);
            assert_eq!((na, &a), (nb, &b), "prompt {prompt:?}");
            assert!(!a.is_empty(), "prompt {prompt:?}");
        }
    }

    #[test]
    fn generate_refuses_params_other_than_finish_had() {
        let e = crate::model::engine().unwrap();
        let mut seq = Sequence::new(e, false);
        seq.push(b"Once upon a time");
        let mut sampled = greedy(4);
        sampled.sampler.temperature = 0.7;
        seq.finish(&greedy(4), Pace::Batched).unwrap();
        assert!(seq.generate(&sampled, |_, _| Ok(())).is_err());
    }

    /// Linear memory does not grow with the prompt: a 256 KiB prompt after a 1 KiB one.
    #[cfg(target_arch = "wasm32")]
    #[test]
    fn memory_does_not_grow_with_prompt_length() {
        let pages = || core::arch::wasm32::memory_size(0);
        // 4 KiB of text, sent as a 1 KiB prompt and as a 256 KiB one (the test never holds
        // the long prompt whole, as the server does not).
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(4096 / 45 + 1);
        run_repeated(&text[..1024], 1, 1024, 16);
        run_repeated(&text[..1024], 1, 1024, 16);
        let after_small = pages();
        run_repeated(&text, 64, 4096, 16);
        assert_eq!(pages(), after_small, "a 256 KiB prompt grew linear memory from {after_small} pages");
        run_repeated(&text[..1024], 1, 1024, 1024);
        assert_eq!(pages(), after_small, "linear memory grew from {after_small} pages");
    }
}
