//! The shipped default model (`models/default-q8_0.gguf`) against llama.cpp: the same prompt
//! tokens and the same greedy continuation for every prompt of the model card
//! (fixture from `models/make_default_refs.py`).

mod common;

use std::path::Path;

use common::{Aligned, read_json};
use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::Mamba;
use tinystate_engine::generate::{CpuDecoder, Decoder};
use tinystate_engine::gguf::Gguf;
use tinystate_engine::sampler::{Sampler, SamplerConfig};
use tinystate_engine::tokenizer::Tokenizer;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn ids(v: &serde_json::Value) -> Vec<TokenId> {
    v.as_array().expect("array of ids").iter().map(|t| TokenId(t.as_u64().unwrap() as u32)).collect()
}

#[test]
fn default_model_matches_llama_cpp_greedy() {
    let file = Aligned::read(&repo("models/default-q8_0.gguf"));
    let refs = read_json(&repo("models/fixtures/default-greedy-llamacpp.json"));
    let g = Gguf::parse(file.bytes()).expect("default model parses");
    let model = Mamba::load(&g).expect("default model loads");
    let tok = Tokenizer::from_gguf(&g).expect("default model has a tokenizer");
    let mut failures = Vec::new();
    for case in refs["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let mut ours = Vec::new();
        tok.encode(prompt, false, &mut ours);
        assert_eq!(ours, ids(&case["prompt_ids"]), "{prompt:?}: tokenisation differs from llama.cpp");
        let want = ids(&case["greedy"]);
        let mut dec = CpuDecoder::new(&model, 64);
        let mut sampler =
            Sampler::new(SamplerConfig { temperature: 0.0, ..SamplerConfig::default() }, model.config.vocab);
        let mut got = Vec::new();
        let mut logits = dec.feed(&ours).unwrap();
        while got.len() < want.len() {
            let t = sampler.sample(logits, &[]);
            got.push(t);
            logits = dec.feed(&[t]).unwrap();
        }
        if got != want {
            failures.push(format!("{prompt:?}: ours {got:?}\n   llama.cpp {want:?}"));
        }
    }
    assert!(failures.is_empty(), "greedy continuations differ:\n{}", failures.join("\n"));
}
