//! tinystate-gpu: runs tinystate's Mamba-1 decoder on a GPU through wgpu (Vulkan, Metal, DX12).
//!
//! How a step runs, step by step:
//!
//! 1. [`Gpu::open`] takes an adapter (discrete before integrated before software) and opens a
//!    device with the adapter's own limits (a 130m F32 embedding is larger than wgpu's default
//!    binding limit).
//! 2. [`GpuModel::load`] repacks every weight matrix once into a WGSL-friendly layout
//!    (`weights.rs`) and uploads it (each kind of layer matrix in one buffer, layer after layer:
//!    the plan binds a layer's slice, the fused step reads it whole), allocates `slots`
//!    fixed-size recurrent states and builds every bind group, so recording a step only sets
//!    pipelines and dispatches.
//! 3. [`GpuModel::mixed`] (a prompt's piece first, then one-token rows, each sequence in its
//!    own slot; [`GpuModel::step`] and [`GpuModel::prefill`] are its two plain cases) validates
//!    its input, writes the token table and submits the whole forward pass as one compute pass
//!    (four or five dispatches per layer, see `model.rs`), recorded while the previous call ran.
//!    A call of one sequence's one token (a single stream) runs instead as the fused step
//!    (`fused.rs`): one dispatch whose workgroups stay resident and meet at grid-wide barriers,
//!    where the plan pays a dispatch boundary per kernel ([`GpuModel::set_fused`]). Every row's
//!    greedy token (its logits' argmax, computed on the GPU) is copied back, 4 bytes a row; its
//!    logits (vocab × 4 bytes) only if the caller wants them ([`StepRow::logits`]).
//!
//! Every kernel has a CPU twin in `tinystate-engine`; `tests/parity.rs` checks them against each
//! other. The crate knows nothing of wasi-nn, HTTP or async: callers own scheduling.
#![deny(missing_docs)]

mod device;
mod fused;
mod kernels;
mod model;
mod weights;

pub use device::{AdapterChoice, Gpu};
pub use model::{
    CallProfile, Feed, GpuModel, KernelTimes, Lead, MAX_IN_FLIGHT, SlotId, StepRow, logits_wanted,
};
pub use tinystate_engine::TokenId;

/// Why a GPU operation failed. Messages say what and which value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GpuError {
    /// No adapter (GPU or software rasteriser) is available.
    #[error("no GPU adapter found")]
    NoAdapter,
    /// The adapter refused to open a device.
    #[error("request_device failed: {0}")]
    RequestDevice(String),
    /// The model or device needs something this crate does not implement.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is missing.
        what: String,
    },
    /// A buffer or dispatch would exceed a device limit.
    #[error("{what} exceeds the device limit of {limit}")]
    TooLarge {
        /// What was too large, with its size.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The caller passed an invalid argument.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The device was lost or reported a validation error; the model must be reloaded.
    #[error("device lost: {0}")]
    DeviceLost(String),
}
