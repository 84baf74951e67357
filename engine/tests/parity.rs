//! Numerical parity of the Mamba decoder with Hugging Face transformers and with llama.cpp.
//!
//! Fixtures come from `tests/fixtures/make_fixtures.py` (random-weight `MambaForCausalLM`
//! models, their GGUF conversions, and transformers' logits for every position of a fixed token
//! sequence) and `tests/fixtures/make_llamacpp_refs.py` (llama.cpp's logits on the same files).

mod common;

use common::{Aligned, fixture, max_abs_diff, read_f32s, read_json};
use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::{Mamba, Scratch, State};
use tinystate_engine::gguf::Gguf;

const CONFIGS: [&str; 2] = ["tiny", "odd"];

/// Max |Δlogit| allowed against transformers (float64 reference) per weight type: F32 is the
/// spec's 1e-4; the others are bounded by their rounding of the weights.
fn tol_vs_hf(ty: &str) -> f32 {
    match ty {
        "f32" => 1e-4,
        "f16" => 2e-2,
        "q8_0" => 6e-2,
        "q4_0" => 0.5,
        _ => unreachable!(),
    }
}

/// Max |Δlogit| allowed against llama.cpp on the same file: same weights, so only summation
/// order and activation quantisation differ.
fn tol_vs_llamacpp(ty: &str) -> f32 {
    match ty {
        "f32" => 1e-4,
        "f16" => 2e-3,
        "q8_0" => 2e-3,
        "q4_0" => 2e-3,
        _ => unreachable!(),
    }
}

struct Case {
    file: Aligned,
    tokens: Vec<TokenId>,
    vocab: usize,
}

impl Case {
    fn load(config: &str, ty: &str) -> Self {
        let dir = fixture(&format!("parity/{config}"));
        let meta = read_json(&dir.join("meta.json"));
        let tokens = read_json(&dir.join("tokens.json"))
            .as_array()
            .expect("tokens.json is an array")
            .iter()
            .map(|v| TokenId(v.as_u64().expect("token id") as u32))
            .collect();
        Self {
            file: Aligned::read(&dir.join(format!("model-{ty}.gguf"))),
            tokens,
            vocab: meta["vocab"].as_u64().expect("meta.vocab") as usize,
        }
    }

    /// Logits of every position, one token at a time (the decode path).
    fn stepwise(&self) -> Vec<f32> {
        let g = Gguf::parse(self.file.bytes()).expect("fixture parses");
        let m = Mamba::load(&g).expect("fixture loads");
        assert_eq!(m.config.vocab, self.vocab);
        let mut state = State::new(&m.config);
        let mut scratch = Scratch::new(&m.config, 1);
        let mut all = Vec::new();
        for &t in &self.tokens {
            all.extend_from_slice(m.forward(&mut state, &mut scratch, &[t], true).unwrap());
        }
        all
    }

    /// Last-position logits and final state after a chunked prefill of the whole sequence.
    fn prefill(&self, chunk: usize) -> (Vec<f32>, State) {
        let g = Gguf::parse(self.file.bytes()).unwrap();
        let m = Mamba::load(&g).unwrap();
        let mut state = State::new(&m.config);
        let mut scratch = Scratch::new(&m.config, chunk);
        let logits = m.forward(&mut state, &mut scratch, &self.tokens, true).unwrap().to_vec();
        (logits, state)
    }
}

fn reference(config: &str, name: &str) -> Vec<f32> {
    read_f32s(&fixture(&format!("parity/{config}/{name}")))
}

#[test]
fn stepwise_decode_matches_transformers() {
    for config in CONFIGS {
        let hf = reference(config, "logits.f32");
        for ty in ["f32", "f16", "q8_0", "q4_0"] {
            let case = Case::load(config, ty);
            let ours = case.stepwise();
            assert_eq!(ours.len(), hf.len(), "{config}/{ty}: positions × vocab");
            for (pos, (a, b)) in ours.chunks(case.vocab).zip(hf.chunks(case.vocab)).enumerate() {
                let d = max_abs_diff(a, b);
                assert!(d <= tol_vs_hf(ty), "{config}/{ty} position {pos}: max |Δ| {d} > {}", tol_vs_hf(ty));
            }
        }
    }
}

#[test]
fn chunked_prefill_matches_stepwise_decode() {
    for config in CONFIGS {
        for ty in ["f32", "q8_0"] {
            let case = Case::load(config, ty);
            let step = case.stepwise();
            let last = &step[step.len() - case.vocab..];
            let (_, reference_state) = case.prefill(1);
            for chunk in [1, 2, 5, 7, 64] {
                let (logits, state) = case.prefill(chunk);
                let d = max_abs_diff(&logits, last);
                assert!(d <= 1e-4, "{config}/{ty} chunk {chunk}: logits max |Δ| {d}");
                let ds = max_abs_diff(&state.ssm, &reference_state.ssm);
                let dc = max_abs_diff(&state.conv, &reference_state.conv);
                assert!(ds <= 1e-4 && dc <= 1e-5, "{config}/{ty} chunk {chunk}: state Δ ssm {ds} conv {dc}");
            }
        }
    }
}

#[test]
fn prefill_matches_transformers_last_position() {
    for config in CONFIGS {
        let hf = reference(config, "logits.f32");
        let case = Case::load(config, "f32");
        let (logits, _) = case.prefill(5);
        let d = max_abs_diff(&logits, &hf[hf.len() - case.vocab..]);
        assert!(d <= 1e-4, "{config}: prefill vs transformers max |Δ| {d}");
    }
}

#[test]
fn decode_matches_llama_cpp_on_the_same_file() {
    for config in CONFIGS {
        for ty in ["f32", "f16", "q8_0", "q4_0"] {
            let case = Case::load(config, ty);
            let theirs = reference(config, &format!("llamacpp-{ty}.f32"));
            let ours = case.stepwise();
            assert_eq!(ours.len(), theirs.len());
            for (pos, (a, b)) in ours.chunks(case.vocab).zip(theirs.chunks(case.vocab)).enumerate() {
                let d = max_abs_diff(a, b);
                let tol = tol_vs_llamacpp(ty);
                assert!(d <= tol, "{config}/{ty} position {pos}: vs llama.cpp max |Δ| {d} > {tol}");
            }
        }
    }
}
#[test]
fn diag_print_all() {
    for config in CONFIGS {
        for ty in ["f32", "f16", "q8_0", "q4_0"] {
            let case = Case::load(config, ty);
            let ours = case.stepwise();
            let hf = reference(config, "logits.f32");
            let dq = if ty == "f32" { hf.clone() } else { reference(config, &format!("logits_dequant-{ty}.f32")) };
            let lc = std::fs::metadata(fixture(&format!("parity/{config}/llamacpp-{ty}.f32"))).ok().map(|_| reference(config, &format!("llamacpp-{ty}.f32")));
            println!("{config} {ty}: vs HF {:.3e}  vs HF-dequant {:.3e}  vs llama.cpp {:?}", max_abs_diff(&ours, &hf), max_abs_diff(&ours, &dq), lc.map(|l| max_abs_diff(&ours, &l)));
        }
    }
}
