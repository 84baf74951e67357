//! Model architectures.

pub mod mamba;
pub mod ops;
