//! WGSL kernels: each pipeline's source is composed from `common.wgsl`, one weight-format file
//! (`weights_*.wgsl`, defining `load_w`) and the op's files; pipelines are cached under a typed
//! key. The `#[repr(C)]` parameter structs mirror each shader's `Params` field for field.

use crate::GpuError;
use crate::weights::Format;
use std::collections::HashMap;

/// A compute op; together with a weight [`Format`] it names one pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    /// Embedding rows for the token ids (`embed.wgsl`).
    Embed,
    /// out (+)= X · Wᵀ with X as is (`in_plain.wgsl` + `matmul.wgsl`).
    MatPlain,
    /// out = RMSNorm(X)·w · Wᵀ (`in_rmsnorm.wgsl` + `matmul.wgsl`).
    MatNorm,
    /// MatNorm, then u = SiLU(conv1d(out[:, :d_inner])) from the tile's sums, for calls whose
    /// tokens fit one tile (`in_rmsnorm.wgsl` + `out_conv.wgsl` + `matmul.wgsl`).
    MatNormConv,
    /// u = SiLU(conv1d(X)) (`conv.wgsl`).
    Conv,
    /// xn = RMSNorm(x)·w, the GEMM path's input (`rmsnorm.wgsl`).
    RmsNorm,
    /// out (+)= X · Wᵀ as a tiled GEMM for batches and prefill chunks (`gemm.wgsl`).
    Gemm,
    /// Δ projection, selective scan, gate and conv window shift, a thread per channel
    /// (`scan_common.wgsl` + `scan.wgsl`).
    Scan,
    /// The same with 16 threads per channel, for small batches (`scan_common.wgsl` +
    /// `scan_lanes.wgsl`).
    ScanLanes,
    /// The index of each logits row's highest value, the greedy token (`argmax.wgsl`).
    Argmax,
}

/// Workgroup tile of `matmul.wgsl`: output rows and tokens per workgroup.
pub(crate) const MM_ROWS: u32 = 4;
/// Tokens per `matmul.wgsl` workgroup.
pub(crate) const MM_TOKENS: u32 = 8;
/// Weight rows per `gemm.wgsl` workgroup.
pub(crate) const GEMM_ROWS: u32 = 32;
/// Tokens per `gemm.wgsl` workgroup.
pub(crate) const GEMM_TOKENS: u32 = 32;
/// Calls with more token rows than this take the GEMM path (`gemm.wgsl`), others the matrix ×
/// vector path (`matmul.wgsl`). At most MM_TOKENS: `out_conv.wgsl` needs every token in one tile.
pub(crate) const GEMM_MIN_TOKENS: u32 = MM_TOKENS;
const _: () = assert!(GEMM_MIN_TOKENS <= MM_TOKENS);
/// Channels per `scan_lanes.wgsl` workgroup.
pub(crate) const SCAN_LANES_CHANNELS: u32 = 4;
/// Calls of at most this many sequences take `scan_lanes.wgsl`, others `scan.wgsl`.
pub(crate) const SCAN_LANES_MAX_SEQS: u32 = 8;
/// Threads per workgroup in every shader.
pub(crate) const WG: u32 = 64;

const COMMON: &str = include_str!("shaders/common.wgsl");
const MATMUL: &str = include_str!("shaders/matmul.wgsl");
const IN_RMSNORM: &str = include_str!("shaders/in_rmsnorm.wgsl");
const OUT_PLAIN: &str = include_str!("shaders/out_plain.wgsl");
const SCAN_COMMON: &str = include_str!("shaders/scan_common.wgsl");

fn source(op: Op, f: Format) -> String {
    let parts: &[&str] = match op {
        Op::Embed => &[include_str!("shaders/embed.wgsl")],
        Op::MatPlain => &[include_str!("shaders/in_plain.wgsl"), OUT_PLAIN, MATMUL],
        Op::MatNorm => &[IN_RMSNORM, OUT_PLAIN, MATMUL],
        Op::MatNormConv => &[IN_RMSNORM, include_str!("shaders/out_conv.wgsl"), MATMUL],
        Op::Conv => &[include_str!("shaders/conv.wgsl")],
        Op::RmsNorm => &[include_str!("shaders/rmsnorm.wgsl")],
        Op::Gemm => &[include_str!("shaders/gemm.wgsl")],
        Op::Scan => &[SCAN_COMMON, include_str!("shaders/scan.wgsl")],
        Op::ScanLanes => &[SCAN_COMMON, include_str!("shaders/scan_lanes.wgsl")],
        Op::Argmax => &[include_str!("shaders/argmax.wgsl")],
    };
    let mut s = String::from(COMMON);
    s.push_str(f.shader());
    parts.iter().for_each(|p| s.push_str(p));
    s
}

/// Compiled pipelines, built on first use.
#[derive(Default)]
pub(crate) struct Pipelines {
    map: HashMap<(Op, Format), wgpu::ComputePipeline>,
}

impl Pipelines {
    /// The pipeline for `op` over weights in format `f`; a shader the device rejects is an error.
    pub(crate) fn get(
        &mut self,
        dev: &wgpu::Device,
        op: Op,
        f: Format,
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        if let Some(p) = self.map.get(&(op, f)) {
            return Ok(p.clone());
        }
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let label = format!("{op:?}/{f:?}");
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(source(op, f).into()),
        });
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            // Every kernel writes its workgroup memory before reading it, so the zero fill WGSL
            // semantics would otherwise add at the start of every workgroup is wasted work.
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Unsupported { what: format!("pipeline {label}: {e}") });
        }
        self.map.insert((op, f), pipe.clone());
        Ok(pipe)
    }
}

/// `embed.wgsl` Params.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct EmbedParams {
    pub groups: u32,
    pub cols: u32,
    pub x_stride: u32,
    pub _pad: u32,
}

/// `matmul.wgsl` Params (the meaning of `aux` depends on the prologue).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatParams {
    pub rows: u32,
    pub cols: u32,
    pub groups: u32,
    pub x_stride: u32,
    pub o_stride: u32,
    pub add: u32,
    pub head: u32,
    pub layer: u32,
    pub aux: [u32; 8],
}

/// `gemm.wgsl` Params.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GemmParams {
    pub rows: u32,
    pub cols: u32,
    pub groups: u32,
    pub x_stride: u32,
    pub o_stride: u32,
    pub add: u32,
    pub head: u32,
    pub _pad: u32,
}

/// `rmsnorm.wgsl` Params.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormParams {
    pub cols: u32,
    pub x_stride: u32,
    pub w_off: u32,
    pub eps_bits: u32,
    pub head: u32,
    pub _pad: [u32; 3],
}

/// `conv.wgsl` Params.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvParams {
    pub d_inner: u32,
    pub d_conv: u32,
    pub n_layer: u32,
    pub layer: u32,
    pub off_w: u32,
    pub off_b: u32,
    pub _pad: [u32; 2],
}

/// `scan.wgsl` Params.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ScanParams {
    pub d_inner: u32,
    pub n_state: u32,
    pub dt_rank: u32,
    pub dt_groups: u32,
    pub n_layer: u32,
    pub layer: u32,
    pub d_conv: u32,
    pub dbc_rms: u32,
    pub eps_bits: u32,
    pub off_dt_bias: u32,
    pub off_a: u32,
    pub off_d: u32,
    pub xdb_stride: u32,
    pub max_tok: u32,
    pub _pad: [u32; 2],
}

/// `argmax.wgsl` Params.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ArgmaxParams {
    pub cols: u32,
    pub stride: u32,
    pub _pad: [u32; 2],
}

/// `common.wgsl` Run: the sizes of one call.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Run {
    pub n_tok: u32,
    pub n_seq: u32,
    pub out_row0: u32,
    pub n_out: u32,
}
