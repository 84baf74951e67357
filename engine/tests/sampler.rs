//! Sampler and stop-string tests. The golden test also runs under wasm
//! (`cargo test -p tinystate-engine --target wasm32-wasip2 --test sampler`) and must give the
//! same tokens there.

use tinystate_engine::TokenId;
use tinystate_engine::sampler::{Sampler, SamplerConfig, StopMatcher, argmax, portable_exp};

fn cfg(temperature: f32, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        repeat_last_n: 64,
        seed,
    }
}

fn draw(s: &mut Sampler, logits: &[f32], recent: &[TokenId]) -> u32 {
    let mut l = logits.to_vec();
    s.sample(&mut l, recent).0
}

fn counts(c: SamplerConfig, logits: &[f32], n: usize) -> Vec<usize> {
    let mut s = Sampler::new(c, logits.len());
    let mut k = vec![0; logits.len()];
    for _ in 0..n {
        k[draw(&mut s, logits, &[]) as usize] += 1;
    }
    k
}

#[test]
fn greedy_picks_argmax_lowest_id() {
    let mut s = Sampler::new(cfg(0.0, 1), 5);
    assert_eq!(draw(&mut s, &[0.1, 3.0, -2.0, 3.0, 1.0], &[]), 1);
    assert_eq!(draw(&mut s, &[-1.0, -1.0], &[]), 0);
    assert_eq!(draw(&mut s, &[-5.0, -4.0, -4.5], &[]), 1);
}

/// `argmax` is the greedy sampler's answer on every kind of row, NaN and infinities included.
#[test]
fn argmax_is_what_greedy_sampling_picks() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let rows: [&[f32]; 10] = [
        &[0.1, 3.0, -2.0, 3.0, 1.0],
        &[nan, 0.0, nan, -1.0],
        &[nan; 4],
        &[-inf; 3],
        &[nan, -inf, nan],
        &[0.0, inf, 5.0, inf],
        &[-1.0, -0.0, 0.0],
        &[-3.0, -2.0, nan, -2.5],
        &[7.0],
        &[],
    ];
    let want = [1, 1, 0, 0, 0, 1, 1, 1, 0, 0];
    let mut greedy = Sampler::new(cfg(0.0, 0), 5);
    for (row, want) in rows.iter().zip(want) {
        assert_eq!(argmax(row), TokenId(want), "{row:?}");
        assert_eq!(draw(&mut greedy, row, &[TokenId(1)]), want, "{row:?}");
    }
}

#[test]
fn picks_argmax_only_for_greedy_without_a_penalty() {
    assert!(cfg(0.0, 0).picks_argmax());
    assert!(SamplerConfig { top_k: 3, top_p: 0.5, min_p: 0.2, ..cfg(0.0, 1) }.picks_argmax());
    assert!(SamplerConfig { repetition_penalty: 1.3, repeat_last_n: 0, ..cfg(0.0, 0) }.picks_argmax());
    assert!(!SamplerConfig { repetition_penalty: 1.3, ..cfg(0.0, 0) }.picks_argmax());
    assert!(!cfg(0.1, 0).picks_argmax());
    assert!(!cfg(f32::NAN, 0).picks_argmax());
}

#[test]
fn top_k_one_is_greedy() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 7919 % 50) as f32 - 25.0) * 0.3).collect();
    let mut greedy = Sampler::new(cfg(0.0, 0), 50);
    let want = draw(&mut greedy, &logits, &[]);
    for t in [0.1, 1.0, 5.0, 100.0] {
        let mut s = Sampler::new(SamplerConfig { top_k: 1, ..cfg(t, 9) }, 50);
        for _ in 0..50 {
            assert_eq!(draw(&mut s, &logits, &[]), want);
        }
    }
}

#[test]
fn seeds() {
    let logits: Vec<f32> = (0..100).map(|i| (i % 10) as f32 * 0.1).collect();
    let run = |seed| {
        let mut s = Sampler::new(cfg(1.0, seed), 100);
        (0..200).map(|_| draw(&mut s, &logits, &[])).collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn distribution_matches_softmax() {
    let logits = [1.0f32, 0.5, 0.0, -0.5, 2.0, -1.0, 0.25, 1.5];
    let n = 20_000;
    let k = counts(cfg(1.0, 77), &logits, n);
    let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
    let chi2: f64 = logits
        .iter()
        .zip(&k)
        .map(|(&l, &obs)| {
            let exp = n as f64 * f64::from(l).exp() / z;
            (obs as f64 - exp).powi(2) / exp
        })
        .sum();
    // 7 degrees of freedom: P(chi2 > 24.3) = 0.001.
    assert!(chi2 < 24.3, "chi2 {chi2}, counts {k:?}");
    // Temperature 2 flattens: compare against softmax(l / 2).
    let k = counts(cfg(2.0, 78), &logits, n);
    let z: f64 = logits.iter().map(|&l| (f64::from(l) / 2.0).exp()).sum();
    let chi2: f64 = logits
        .iter()
        .zip(&k)
        .map(|(&l, &obs)| {
            let exp = n as f64 * (f64::from(l) / 2.0).exp() / z;
            (obs as f64 - exp).powi(2) / exp
        })
        .sum();
    assert!(chi2 < 24.3, "chi2 {chi2}, counts {k:?}");
}

/// Logits of probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
fn four() -> Vec<f32> {
    [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect()
}

#[test]
fn top_p_and_min_p_exclude_the_tail() {
    let k = counts(SamplerConfig { top_p: 0.75, ..cfg(1.0, 3) }, &four(), 4000);
    assert!(k[0] > 0 && k[1] > 0 && k[2] == 0 && k[3] == 0, "{k:?}");
    let k = counts(SamplerConfig { top_p: 0.9, ..cfg(1.0, 3) }, &four(), 4000);
    assert!(k[2] > 0 && k[3] == 0, "{k:?}");
    // min-p 0.2: keep p >= 0.1.
    let k = counts(SamplerConfig { min_p: 0.2, ..cfg(1.0, 4) }, &four(), 4000);
    assert!(k[2] > 0 && k[3] == 0, "{k:?}");
    let k = counts(SamplerConfig { min_p: 0.5, ..cfg(1.0, 4) }, &four(), 4000);
    assert!(k[1] > 0 && k[2] == 0 && k[3] == 0, "{k:?}");
    // top-k 2.
    let k = counts(SamplerConfig { top_k: 2, ..cfg(1.0, 5) }, &four(), 4000);
    assert!(k[1] > 0 && k[2] == 0 && k[3] == 0, "{k:?}");
    // Filters keep at least one token.
    let k = counts(SamplerConfig { top_p: 0.0, min_p: 1.0, ..cfg(1.0, 5) }, &four(), 100);
    assert_eq!(k, [100, 0, 0, 0]);
}

#[test]
fn repetition_penalty() {
    let c = SamplerConfig { repetition_penalty: 2.0, repeat_last_n: 3, ..cfg(0.0, 0) };
    let mut s = Sampler::new(c, 4);
    let mut l = vec![2.0f32, 1.5, -1.0, 0.0];
    // Token 0 three times: penalised once; token 3 is outside the last 3.
    assert_eq!(s.sample(&mut l, &[TokenId(3), TokenId(0), TokenId(2), TokenId(0)]), TokenId(1));
    assert_eq!(l, [1.0, 1.5, -2.0, 0.0]);
    // Out-of-range ids in `recent` are ignored.
    let mut l = vec![1.0f32, 0.0];
    assert_eq!(s.sample(&mut l, &[TokenId(99)]), TokenId(0));
}

#[test]
fn non_finite_logits() {
    let mut s = Sampler::new(cfg(1.0, 11), 4);
    for _ in 0..50 {
        assert_eq!(draw(&mut s, &[f32::NAN, 0.0, f32::NAN, -1.0], &[]) % 2, 1);
        assert_eq!(draw(&mut s, &[f32::NAN; 4], &[]), 0);
        assert_eq!(draw(&mut s, &[f32::NEG_INFINITY; 4], &[]), 0);
        assert_eq!(draw(&mut s, &[0.0, f32::INFINITY, 5.0, f32::NEG_INFINITY], &[]), 1);
    }
    let k = counts(cfg(1.0, 12), &[f32::INFINITY, 0.0, f32::INFINITY], 1000);
    assert!(k[0] > 400 && k[2] > 400 && k[1] == 0, "{k:?}");
    let mut g = Sampler::new(cfg(0.0, 0), 3);
    assert_eq!(draw(&mut g, &[f32::NAN, f32::NAN, 1.0], &[]), 2);
    assert_eq!(draw(&mut g, &[], &[]), 0);
    assert_eq!(portable_exp(f32::NAN).to_bits(), f32::NAN.to_bits());
}

/// Fixed logits and seed; the token list must be the same on every platform.
fn golden_run(c: SamplerConfig) -> Vec<u32> {
    let vocab = 64;
    let base: Vec<f32> = (0..vocab).map(|i| ((i * 37 % vocab) as f32 - 32.0) / 8.0).collect();
    let mut s = Sampler::new(c, vocab);
    let mut recent = Vec::new();
    for step in 0..48 {
        // Vary the logits a little per step, with exact arithmetic only.
        let mut l: Vec<f32> =
            base.iter().enumerate().map(|(i, &x)| x + ((i + step) % 5) as f32 * 0.25).collect();
        recent.push(s.sample(&mut l, &recent));
    }
    recent.into_iter().map(|t| t.0).collect()
}

#[test]
fn golden_tokens() {
    let filtered = golden_run(SamplerConfig {
        temperature: 0.7,
        top_k: 20,
        top_p: 0.9,
        min_p: 0.02,
        repetition_penalty: 1.3,
        repeat_last_n: 8,
        seed: 1234,
    });
    let plain = golden_run(cfg(1.0, 42));
    assert_eq!(filtered, GOLDEN_FILTERED);
    assert_eq!(plain, GOLDEN_PLAIN);
}

const GOLDEN_FILTERED: [u32; 48] = [
    19, 62, 50, 43, 38, 29, 12, 57, 36, 31, 24, 38, 19, 55, 5, 29, 38, 43, 17, 10, 50, 12, 19, 31, 55, 38,
    43, 38, 5, 50, 24, 12, 62, 31, 57, 19, 38, 31, 36, 19, 19, 24, 19, 19, 12, 38, 31, 57,
];
const GOLDEN_PLAIN: [u32; 48] = [
    19, 19, 17, 34, 18, 17, 17, 22, 10, 24, 62, 12, 55, 50, 55, 10, 62, 22, 43, 55, 19, 57, 38, 24, 50, 24,
    19, 43, 36, 38, 12, 62, 22, 1, 29, 17, 48, 57, 5, 46, 31, 17, 55, 17, 3, 19, 50, 62,
];

/// Pushes `text` split at `cuts`; returns (emitted text, stopped).
fn stop_stream(stops: &[&str], text: &str, cuts: &[usize]) -> (String, bool) {
    let mut m = StopMatcher::new(stops.iter().copied());
    let mut out = String::new();
    let mut at = 0;
    for &c in cuts.iter().chain([text.len()].iter()) {
        let r = m.push(&text[at..c]);
        out.push_str(r.text);
        at = c;
        if r.stopped {
            return (out, true);
        }
    }
    out.push_str(m.finish());
    (out, false)
}

#[test]
fn stop_strings_at_every_split() {
    let cases: &[(&[&str], &str, &str, bool)] = &[
        (&["STOP"], "Hello world. STOP here", "Hello world. ", true),
        (&["STOP", "world!"], "Hello world! STOP", "Hello ", true),
        (&["abcd", "bc"], "xabcd", "xa", true), // "bc" ends first
        (&["abc", "b"], "abc", "a", true),
        (&["</s>"], "no stop here </s", "no stop here </s", false),
        (&["ééé"], "aéé ééé!", "aéé ", true),
        (&["\n\n"], "line\nline\n\nnext", "line\nline", true),
        (&["aab"], "aaaab", "aa", true),
        (&[], "anything", "anything", false),
    ];
    for &(stops, text, want, stopped) in cases {
        let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        assert_eq!(stop_stream(stops, text, &[]), (want.to_string(), stopped), "{text:?} whole");
        for &i in &boundaries {
            for &j in boundaries.iter().filter(|&&j| j >= i) {
                let got = stop_stream(stops, text, &[i, j]);
                assert_eq!(got, (want.to_string(), stopped), "{text:?} split at {i}, {j}");
            }
        }
        // One character at a time.
        let got = stop_stream(stops, text, &boundaries[1..boundaries.len() - 1]);
        assert_eq!(got, (want.to_string(), stopped), "{text:?} per char");
    }
}

#[test]
fn stop_matcher_holds_back_only_prefixes() {
    let mut m = StopMatcher::new(["<|end|>"]);
    assert_eq!(m.push("hello <|e").text, "hello ");
    assert_eq!(m.push("x").text, "<|ex");
    let r = m.push(" <|end|> tail");
    assert_eq!((r.text, r.stopped), (" ", true));
    assert!(m.stopped());
    assert_eq!(m.push("more").text, "");
    assert_eq!(m.finish(), "");
}
