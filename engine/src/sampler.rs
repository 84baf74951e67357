//! Sampling: logits to a token, giving the same tokens on every platform for the same seed.
//!
//! [`Sampler::sample`] applies, in this order:
//! 1. **repetition penalty** (llama.cpp's `penalty_repeat`): each distinct token among the last
//!    `repeat_last_n` of `recent` has its logit divided by the penalty if positive, multiplied by
//!    it otherwise;
//! 2. **greedy** if `temperature <= 0`: the highest logit, the lowest id among equals;
//! 3. **top-k**: keep the `top_k` highest logits (ties: lower id first);
//! 4. **softmax** of `logit / temperature` over what is kept;
//! 5. **top-p**: keep the smallest run of most probable tokens whose probabilities add up to at
//!    least `top_p`;
//! 6. **min-p**: keep the tokens at least `min_p` times as probable as the most probable one;
//! 7. **draw** one token from what is left, in order of decreasing probability (ties by id).
//!
//! (llama.cpp's common chain applies temperature last, so its top-p and min-p see unscaled
//! probabilities; here they see the distribution the token is actually drawn from.)
//!
//! Determinism across native and wasm: every step uses only IEEE-754 `+ - * /`, comparisons and
//! integer/bit operations, which give the same bits everywhere (Rust never fuses a multiply
//! and an add on its own). `exp` is [`portable_exp`] (no libm), the random numbers come from a
//! hand-written xoshiro256** seeded through splitmix64, uniform floats are built from integer
//! bits, and sorting is by a total order with ties broken by token id.
//!
//! Non-finite logits: NaN counts as −∞. If any logit is +∞, the draw is uniform over the +∞
//! tokens. −∞ tokens are never drawn, unless every logit is −∞ (or NaN), in which case token 0
//! is returned. An empty logits slice also gives token 0.
//!
//! [`StopMatcher`] cuts streamed text at stop strings.

use std::cmp::Ordering;

use crate::TokenId;

/// Sampling parameters. The defaults are llama.cpp's (`common_params_sampling`).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` is greedy.
    pub temperature: f32,
    /// Keep this many most likely tokens; 0 = all.
    pub top_k: usize,
    /// Nucleus sampling threshold; `>= 1` = off.
    pub top_p: f32,
    /// Keep tokens at least this fraction as likely as the most likely; `<= 0` = off.
    pub min_p: f32,
    /// Repetition penalty; 1 = off.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Random seed.
    pub seed: u64,
}

impl SamplerConfig {
    /// Whether [`Sampler::sample`] always returns [`argmax`] of the logits as given: greedy
    /// (`temperature <= 0`) with no repetition penalty (1, or a window of 0 tokens). Then a
    /// decoder may hand over only the argmax instead of the logits.
    pub fn picks_argmax(&self) -> bool {
        self.temperature <= 0.0 && (self.repetition_penalty == 1.0 || self.repeat_last_n == 0)
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// One candidate token.
#[derive(Clone, Copy, Debug)]
struct Cand {
    id: u32,
    logit: f32,
    /// Unnormalised probability, `exp(logit / T - max)`.
    p: f32,
}

/// Higher logit first, then lower id: a total order (NaN never gets here).
fn by_logit(a: &Cand, b: &Cand) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Draws tokens from logits. Owns its random generator and a candidate buffer sized to the
/// vocabulary, allocated once; [`Sampler::sample`] allocates nothing.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Xoshiro256,
    /// (vocab,) candidates
    cands: Vec<Cand>,
    /// (vocab,) `stamp[id] == generation` marks a token already penalised this call.
    stamp: Vec<u32>,
    generation: u32,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab` tokens.
    pub fn new(cfg: SamplerConfig, vocab: usize) -> Self {
        let rng = Xoshiro256::new(cfg.seed);
        Self { cfg, rng, cands: Vec::with_capacity(vocab), stamp: vec![0; vocab], generation: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token. `logits` (one per token) is modified: NaN becomes −∞ and the
    /// repetition penalty is applied in place. `recent` are the tokens so far, oldest first.
    ///
    /// A slice longer than the vocabulary given to [`Sampler::new`] grows the buffers once.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[TokenId]) -> TokenId {
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        self.penalize(logits, recent);
        if logits.is_empty() {
            return TokenId(0);
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }

        // Candidates, top-k.
        self.cands.clear();
        self.cands.extend(logits.iter().enumerate().map(|(i, &logit)| Cand { id: i as u32, logit, p: 0.0 }));
        let k = self.cfg.top_k;
        if k > 0 && k < self.cands.len() {
            self.cands.select_nth_unstable_by(k - 1, by_logit);
            self.cands.truncate(k);
        }
        self.cands.sort_unstable_by(by_logit);

        // Softmax (unnormalised) with temperature; infinities as documented.
        let top = self.cands[0].logit;
        if top == f32::NEG_INFINITY {
            return TokenId(self.cands[0].id);
        }
        if top == f32::INFINITY {
            let n = self.cands.iter().take_while(|c| c.logit == f32::INFINITY).count();
            return TokenId(self.cands[self.rng.below(n)].id);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        let max = top * inv_t;
        let mut total = 0.0f64;
        for c in self.cands.iter_mut() {
            c.p = portable_exp(c.logit * inv_t - max);
            total += f64::from(c.p);
        }

        // Top-p: the shortest prefix reaching top_p of the total.
        let mut keep = self.cands.len();
        if self.cfg.top_p < 1.0 {
            let target = f64::from(self.cfg.top_p.max(0.0)) * total;
            let mut cum = 0.0f64;
            for (i, c) in self.cands.iter().enumerate() {
                cum += f64::from(c.p);
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
        }
        // Min-p: relative to the most probable, whose p is exactly 1.
        if self.cfg.min_p > 0.0 {
            keep = self.cands[..keep].iter().take_while(|c| c.p >= self.cfg.min_p).count().max(1);
        }

        // Draw.
        let kept = &self.cands[..keep];
        let total: f64 = kept.iter().map(|c| f64::from(c.p)).sum();
        let target = self.rng.unit_f64() * total;
        let mut cum = 0.0f64;
        for c in kept {
            cum += f64::from(c.p);
            if cum > target {
                return TokenId(c.id);
            }
        }
        TokenId(kept[keep - 1].id)
    }

    /// Applies the repetition penalty to `logits`, once per distinct recent token.
    fn penalize(&mut self, logits: &mut [f32], recent: &[TokenId]) {
        let penalty = self.cfg.repetition_penalty;
        if penalty == 1.0 || self.cfg.repeat_last_n == 0 {
            return;
        }
        if self.stamp.len() < logits.len() {
            self.stamp.resize(logits.len(), 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        let window = &recent[recent.len().saturating_sub(self.cfg.repeat_last_n)..];
        for t in window {
            let i = t.index();
            if i >= logits.len() || self.stamp[i] == self.generation {
                continue;
            }
            self.stamp[i] = self.generation;
            let l = &mut logits[i];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// The greedy choice: the index of the highest logit, the lowest among equals, NaN counting as
/// −∞; 0 when every logit is −∞ or NaN, or there are none. What [`Sampler::sample`] returns
/// when `temperature <= 0` and no repetition penalty applies (see
/// [`SamplerConfig::picks_argmax`]), so a backend that computes it elsewhere (the GPU) must
/// follow the same rules.
pub fn argmax(logits: &[f32]) -> TokenId {
    let (mut best, mut top) = (0, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        // NaN > anything is false: a NaN is never taken, as −∞ is not.
        if x > top {
            (best, top) = (i, x);
        }
    }
    TokenId(best as u32)
}

/// `e^x`, computed with the same bits on every IEEE-754 platform: `x = k·ln 2 + y` with `k` an
/// integer and `|y| <= ln 2 / 2` (Cody-Waite reduction with a two-part ln 2); `e^y` is a degree-7
/// Taylor polynomial (truncation error below 1e-8), `2^k` is written into the exponent bits.
/// Relative error about 1e-7. Results below 2^-126 flush to 0 and above 2^127 saturate to +∞.
pub fn portable_exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split Cody-Waite style: k * LN2_HI is exact for |k| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    if x.is_nan() {
        return x;
    }
    let t = x * LOG2_E;
    if t < -126.0 {
        return 0.0;
    }
    if t > 127.0 {
        return f32::INFINITY;
    }
    // k = round(t), by truncating casts only.
    let shifted = t + 0.5;
    let mut k = shifted as i32;
    if (k as f32) > shifted {
        k -= 1;
    }
    let kf = k as f32;
    let y = (x - kf * LN2_HI) - kf * LN2_LO; // x - k ln 2, |y| <~ ln2 / 2
    // e^y = 1 + y + y^2/2! + ... + y^7/7!, Horner form.
    const C: [f32; 8] = [1.0, 1.0, 1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let mut p = C[7];
    for &c in C[..7].iter().rev() {
        p = p * y + c;
    }
    // p in [0.7, 1.42]; multiply by 2^k in two steps so 2^k itself stays a normal number.
    let half = k / 2;
    let scale = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    p * scale(half) * scale(k - half)
}

/// xoshiro256** (Blackman & Vigna), seeded with splitmix64.
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut splitmix = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self { s: [splitmix(), splitmix(), splitmix(), splitmix()] }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (n > 0), by multiply-shift (bias below 2^-32 for any n < 2^32).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// What [`StopMatcher::push`] returns.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutput<'a> {
    /// Text that is safe to show: it cannot be part of a stop string.
    pub text: &'a str,
    /// A stop string has appeared; `text` is everything before it, and generation should end.
    pub stopped: bool,
}

/// Cuts streamed text at stop strings.
///
/// Text that might be the start of a stop string is held back until it is known not to be.
/// Generation stops at the first stop string to *end* in the text (of those ending at the same
/// place, the one starting first); the text before it is emitted, the stop string and anything
/// after it are not. The result is the same however the text is split into pushes.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text held back (a proper prefix of some stop string).
    held: String,
    /// Scratch: held text plus the new text.
    buf: String,
    /// Returned text.
    out: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty ones are ignored).
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> Self {
        let stops = stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        Self { stops, ..Self::default() }
    }

    /// Adds generated text.
    pub fn push(&mut self, text: &str) -> StopOutput<'_> {
        self.out.clear();
        if self.stopped {
            return StopOutput { text: &self.out, stopped: true };
        }
        self.buf.clear();
        self.buf.push_str(&self.held);
        self.buf.push_str(text);
        // The occurrence that ends first (then starts first).
        let mut hit: Option<(usize, usize)> = None;
        for stop in &self.stops {
            if let Some(start) = self.buf.find(stop.as_str()) {
                let key = (start + stop.len(), start);
                if hit.is_none_or(|h| key < h) {
                    hit = Some(key);
                }
            }
        }
        if let Some((_, start)) = hit {
            self.out.push_str(&self.buf[..start]);
            self.held.clear();
            self.stopped = true;
            return StopOutput { text: &self.out, stopped: true };
        }
        // Hold back the longest suffix that is a proper prefix of a stop string.
        let bytes = self.buf.as_bytes();
        let mut hold = 0;
        for stop in &self.stops {
            let s = stop.as_bytes();
            for k in (hold + 1..s.len().min(bytes.len() + 1)).rev() {
                if bytes.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        let cut = self.buf.len() - hold;
        self.out.push_str(&self.buf[..cut]);
        self.held.clear();
        self.held.push_str(&self.buf[cut..]);
        StopOutput { text: &self.out, stopped: false }
    }

    /// Ends the stream: returns the text still held back (none once stopped) and resets.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if !self.stopped {
            self.out.push_str(&self.held);
        }
        self.held.clear();
        self.stopped = false;
        &self.out
    }

    /// Whether a stop string has appeared.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(portable_exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.01;
        }
        println!("portable_exp worst relative error {worst:e}");
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(portable_exp(0.0), 1.0);
        assert_eq!(portable_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(portable_exp(-200.0), 0.0);
        assert_eq!(portable_exp(200.0), f32::INFINITY);
    }

    #[test]
    fn xoshiro_reference() {
        // splitmix64(0) outputs, then xoshiro256** steps: fixed forever.
        let mut r = Xoshiro256::new(0);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut r2 = Xoshiro256::new(0);
        assert_eq!(first, (0..3).map(|_| r2.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
    }
}
