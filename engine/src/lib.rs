//! tinystate-engine: the portable decoder library of tinystate.
//!
//! It reads GGUF files zero-copy ([`gguf`]), views their tensors in ggml's storage formats
//! ([`tensor`]), runs tiny-state decoders on the CPU with SIMD kernels ([`kernels`],
//! [`arch::mamba`]), and turns text into tokens and back ([`tokenizer`]) and logits into tokens
//! ([`sampler`]).
//!
//! It does no I/O and needs no threads: the caller hands it bytes (a memory-mapped file, or a
//! `static` inside a wasm guest). With the `threads` feature, large matrix products are split
//! across rayon's thread pool. It builds for native targets and `wasm32-wasip2`.
#![deny(missing_docs)]

pub mod arch;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod sampler;
pub mod tensor;
pub mod tokenizer;

/// A token id: an index into the model's vocabulary.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, bytemuck::Pod, bytemuck::Zeroable,
)]
#[repr(transparent)]
pub struct TokenId(pub u32);

impl TokenId {
    /// The id as a vocabulary index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
