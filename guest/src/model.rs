//! The model baked into the component, and everything built from it once per *component*, not
//! per request.
//!
//! The GGUF file is a `static` (see `build.rs` for which file): wasmtime maps it copy-on-write
//! from the module image, so instances share its pages and nothing copies the weights. The
//! parsed structures ([`Engine`]: tensor views, tokenizer tables, compiled chat template) live
//! in a [`OnceLock`]. The release build runs [`init`] under `wasmtime wizer` (exported as
//! `wizer-initialize`) and snapshots the result into the component's memory image, so a fresh
//! instance starts with the tokenizer already built: no per-request work grows with the
//! vocabulary. Without the snapshot the first request of each instance builds it lazily.
//!
//! The `nn` build bakes in only the model's metadata (see `build.rs`): it has no weights and no
//! [`Mamba`]; its [`Dec`] asks the host's wasi-nn for logits ([`crate::nn`]).

use std::sync::OnceLock;

use tinystate_engine::TokenId;
#[cfg(not(feature = "nn"))]
use tinystate_engine::arch::mamba::{DEFAULT_MAX_CHUNK, Mamba};
use tinystate_engine::generate::DecodeError;
use tinystate_engine::gguf::Gguf;
use tinystate_engine::tokenizer::Tokenizer;

use crate::api::ApiError;
use crate::chat::ChatTemplate;

/// One sequence's decoder: the engine in-process, or (`nn`) the host's wasi-nn.
#[cfg(not(feature = "nn"))]
pub type Dec = tinystate_engine::generate::CpuDecoder<'static, 'static>;
/// One sequence's decoder: the engine in-process, or (`nn`) the host's wasi-nn.
#[cfg(feature = "nn")]
pub type Dec = crate::nn::NnDecoder;

/// Aligns its contents to 64 bytes so tensors can be read in place.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

/// The GGUF file, chosen at build time (`TINYSTATE_MODEL`, see `build.rs`).
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("TINYSTATE_MODEL")));

/// The nn build's metadata again, as a custom section the host reads at start-up to check
/// that each of its models has this tokenizer (`tinystate serve`, `NN_META_SECTION`).
#[cfg(all(feature = "nn", target_arch = "wasm32"))]
#[unsafe(link_section = "tinystate-nn-meta")]
#[used]
static META_SECTION: [u8; include_bytes!(env!("TINYSTATE_MODEL")).len()] =
    *include_bytes!(env!("TINYSTATE_MODEL"));

/// Everything a request needs from the model, built once.
pub struct Engine {
    /// The decoder: weights are views into [`MODEL`].
    #[cfg(not(feature = "nn"))]
    pub model: Mamba<'static>,
    /// The tokenizer built from `tokenizer.ggml.*`.
    pub tokenizer: Tokenizer,
    /// The chat template (the model's, or the plain fallback).
    pub chat: ChatTemplate,
    /// The name served in `/v1/models` and accepted in `model`.
    pub id: &'static str,
    /// The end-of-generation tokens, where greedy tokens computed ahead may stop.
    pub eog: Vec<TokenId>,
}

impl Engine {
    /// A fresh decoder for one sequence.
    pub fn decoder(&'static self) -> Dec {
        #[cfg(not(feature = "nn"))]
        return Dec::new(&self.model, DEFAULT_MAX_CHUNK);
        #[cfg(feature = "nn")]
        return Dec::new();
    }

    /// The name clients see in `/v1/models` and `model`: the embedded model's id, or in the `nn`
    /// build the name of the host's model it decodes with ([`crate::nn::model_name`]).
    pub fn served_id(&self) -> String {
        #[cfg(not(feature = "nn"))]
        return self.id.to_owned();
        #[cfg(feature = "nn")]
        return crate::nn::model_name();
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        ApiError::internal(format!("decoding failed: {e}"))
    }
}

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// The engine, built on first use (or restored from the pre-initialised snapshot). An error
/// means the baked-in model is unusable; every request then gets a 500 with this message.
pub fn engine() -> Result<&'static Engine, &'static str> {
    ENGINE.get_or_init(build).as_ref().map_err(String::as_str)
}

/// Heap grown once at start-up and left free, so that a request's allocations (bounded by
/// the limits in [`crate::api`]) come from it and the linear-memory peak is the same for every
/// completion request, whatever its prompt or output length. Untouched pages cost nothing.
pub const HEAP_HEADROOM: usize = 1 << 20;

/// Builds the engine, a warmed-up spare sequence and the heap headroom, once; run by
/// `wasmtime wizer` before the snapshot (and by the first request of an instance that was not
/// pre-initialised).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(init_now);
}

fn init_now() {
    if let Ok(e) = engine() {
        crate::prompt::Sequence::prepare_spare(e);
    }
    drop(std::hint::black_box(Vec::<u8>::with_capacity(HEAP_HEADROOM)));
}

/// Name of the model when the GGUF has no `general.name`.
const FALLBACK_ID: &str = "tinystate";

fn build() -> Result<Engine, String> {
    let g = Gguf::parse(&MODEL.0).map_err(|e| format!("embedded model: {e}"))?;
    let tokenizer = Tokenizer::from_gguf(&g).map_err(|e| format!("embedded model tokenizer: {e}"))?;
    #[cfg(not(feature = "nn"))]
    let model = Mamba::load(&g).map_err(|e| format!("embedded model: {e}"))?;
    #[cfg(not(feature = "nn"))]
    if tokenizer.vocab_size() > model.config.vocab {
        return Err(format!(
            "embedded model: the tokenizer has {} tokens but the model only {}",
            tokenizer.vocab_size(),
            model.config.vocab
        ));
    }
    let id = option_env!("TINYSTATE_MODEL_ID")
        .or_else(|| g.get_str("general.name").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or(FALLBACK_ID);
    let template = g.get_str("tokenizer.chat_template").ok();
    let token = |key: &str| {
        g.get_u32(key).ok().map(|id| tokenizer.token_text(tinystate_engine::TokenId(id)).to_owned())
    };
    let chat = ChatTemplate::new(
        template,
        token("tokenizer.ggml.bos_token_id").unwrap_or_default(),
        token("tokenizer.ggml.eos_token_id").unwrap_or_default(),
    )
    .map_err(|e| format!("embedded model chat template: {e}"))?;
    Ok(Engine {
        #[cfg(not(feature = "nn"))]
        model,
        eog: tokenizer.eog_tokens().collect(),
        tokenizer,
        chat,
        id,
    })
}
