//! tinystate-guest: the wasm component that serves a language model over HTTP.
//!
//! It exports `wasi:http/incoming-handler` (spin-sdk's `#[http_component]`), so Fermyon Spin,
//! `wasmtime serve` and `tinystate serve` all run it, one fresh instance per request. The model
//! is baked in ([`model`]); the API is OpenAI's ([`api`]):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/completions` | `prompt` → text; `stream: true` as server-sent events ([`sse`]) |
//! | `POST /v1/chat/completions` | `messages` through the chat template ([`chat`]) → text |
//! | `GET /v1/models` | the one model |
//! | `GET /health` | `{"status":"ok"}` |
//! | `GET /` | the playground page |
//!
//! A completion request is handled in constant memory: the body is read in pieces under
//! [`api::MAX_BODY_BYTES`]; the `prompt` string is unescaped as it arrives
//! ([`json_stream`]), tokenised incrementally and prefilled chunk by chunk ([`prompt`]); the
//! output is written as it is generated. Chat requests are capped at [`api::MAX_CHAT_BYTES`]
//! and rendered whole. Bad input gets a 4xx with OpenAI's error body, never a trap.
//!
//! With the `nn` feature the component holds only the model's tokenizer and asks the host's
//! wasi-nn for logits ([`nn`]); the API is the same.
//!
//! What it does not do: more than one choice (`n`), `echo`, `logprobs`, tools.
#![deny(missing_docs)]

pub mod api;
pub mod chat;
#[cfg(all(target_arch = "wasm32", not(test)))]
mod http;
pub mod json_stream;
pub mod model;
#[cfg(feature = "nn")]
pub mod nn;
pub mod prompt;
pub mod sse;

/// Exports `wizer-initialize`, which `wasmtime wizer` runs before snapshotting the component:
/// it builds the [`model::Engine`] so instances start with it in their memory image.
#[cfg(all(target_arch = "wasm32", not(test)))]
mod init {
    wit_bindgen::generate!({
        inline: "package tinystate:guest; world init { export wizer-initialize: func(); }",
    });
    struct Init;
    impl Guest for Init {
        fn wizer_initialize() {
            crate::model::init();
        }
    }
    export!(Init);
}

#[cfg(all(target_arch = "wasm32", not(test)))]
mod handler;
