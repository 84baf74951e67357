//! One Mamba-1 model on the GPU: weights uploaded once, `slots` resident recurrent states, and a
//! prerecorded plan of dispatches that every call replays inside one compute pass.
//!
//! The plan, for a call of n tokens (B decode rows, or one slot's prefill chunk). Two paths are
//! prerecorded; a call takes the small one when n ≤ GEMM_MIN_TOKENS (matrix × vectors,
//! `matvec.wgsl`, conv fused into in_proj) and the GEMM one otherwise (in_proj and lm_head as
//! `gemm.wgsl` on inputs normed / convolved by their own kernels; out_proj turns GEMM only past
//! OUT_PROJ_GEMM_MIN tokens, and the narrow x_proj stays matrix × vectors). On a device with
//! tensor cores ([`Gpu::tensor_cores`]) every GEMM is `gemm_coop.wgsl` (f16 inputs, f32 sums;
//! the norms and the conv write its input in f16, out_proj's y is converted as it loads),
//! out_proj turns GEMM past GEMM_MIN_TOKENS and x_proj past OUT_PROJ_GEMM_MIN. The scan is a thread
//! per (sequence, channel), its states in registers. Matrix shapes and state sizes are compiled
//! into the pipelines (`kernels::Spec`):
//! ```text
//! embed                    x  (n, d_model)      = token_embd[ids]
//! per layer:
//!   in_proj                xz (n, 2·d_inner)    = RMSNorm(x)·attn_norm · W_inᵀ
//!   conv                   u  (n, d_inner)      = SiLU(conv1d(xz[:, :d_inner]))
//!   x_proj                 xdb (n, r + 2·N)     = u · W_xᵀ
//!   scan                   y  (n, d_inner)      = scan(u, softplus(W_dt·δ + b), A, B, C, D) · SiLU(z)
//!   out_proj               x += y · W_outᵀ
//! lm_head                  logits (n_out, vocab) = RMSNorm(x[rows])·norm_f · W_outputᵀ
//! argmax                   ids (n_out,)          = the highest logit's index per row
//! ```
//! so a small call is 4·n_layer + 4 dispatches and a GEMM call 6·n_layer + 5, in one submission.
//! A call of one sequence's one token runs, where the device can ([`GpuModel::set_fused`]), as
//! the fused step instead (`fused.rs`: embed and every layer in one dispatch) followed by the
//! plan's LM head and argmax.
//! Every call reads back the ids (4 bytes a row: the greedy token); only the logits rows the
//! caller asks for are copied back too ([`StepRow::logits`], [`GpuModel::prefill`]).
//! Each sequence's token rows are described by a small table (`meta`, see
//! `shaders/common.wgsl`) written before the submission; the conv reads a slot's window and the
//! scan kernel, which runs after every reader, shifts it.

use crate::device::{ErrorSlot, Gpu};
use crate::fused::{FusedStep, LayerWeights, Shared, SmallsLayout, Split, Stacked};
use crate::kernels::{
    ARGMAX_PARTS, ArgmaxParams, COOP_SMALL_TOKENS, ConvParams, EmbedParams, GEMM_MIN_TOKENS, GemmKernel,
    GemmParams, GemmShape, LEAD_SCAN_CHANNELS, MM_TOKENS, MvParams, MvShape, NormParams, Op, Pipelines, Run,
    SCAN_CHANNELS, ScanParams, Spec, WG, half_row,
};
use crate::weights::{Format, Packed, pack, same_tensor, stack};
use crate::{GpuError, TokenId};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tinystate_engine::arch::mamba::{Config, Layer, Mamba};
use tinystate_engine::tensor::Matrix;
use wgpu::util::DeviceExt;

/// Index of a fixed-size state slot on the GPU (0..slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// One decode row of a [`GpuModel::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRow {
    /// The sequence's state slot.
    pub slot: SlotId,
    /// The token it feeds.
    pub token: Feed,
    /// Whether the caller wants this row's logits back; its argmax comes back either way.
    pub logits: bool,
}

/// Where a decode row's token comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// This token.
    Token(TokenId),
    /// The greedy token that the call submitted just before this one computed for its
    /// sequence k: read on the GPU, so this call can be submitted before that one's results are
    /// back (see [`GpuModel::submit`]).
    Greedy(u32),
}

impl From<TokenId> for Feed {
    fn from(t: TokenId) -> Self {
        Feed::Token(t)
    }
}

/// How many sequences of a call over `lead` and `rows` want their logits back: the rows of the
/// logits buffer [`GpuModel::finish`] fills.
pub fn logits_wanted(lead: Option<Lead<'_>>, rows: &[StepRow]) -> usize {
    usize::from(lead.is_some_and(|l| l.logits)) + rows.iter().filter(|r| r.logits).count()
}

/// Marks a token id in the token table as [`Feed::Greedy`] (embed.wgsl's FROM_PREV).
const FROM_PREV: u32 = 1 << 31;

/// Calls that may be in flight at once ([`GpuModel::submit`]): one running, one queued behind
/// it, each with its own staging buffer.
pub const MAX_IN_FLIGHT: usize = 2;

/// A submitted call whose results are not read back yet.
#[derive(Clone, Copy, Debug)]
struct Flight {
    /// Which of `acts.staging` it copies its results into.
    staging: usize,
    /// Its sequences (greedy ids read back).
    ids: usize,
    /// Its wanted logits rows.
    logits: usize,
    /// Its timestamp queries, when profiled.
    queries: Option<u32>,
    /// Whether it ran as the fused step, whose abandon flag it copied to its staging at 4.
    fused: bool,
}

/// A chunk of one sequence that goes first in a [`GpuModel::mixed`] call: a prompt's next piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lead<'a> {
    /// The sequence's state slot.
    pub slot: SlotId,
    /// Its next tokens (1..=max_chunk).
    pub tokens: &'a [TokenId],
    /// Whether the caller wants the logits after the last of them; the argmax comes back either way.
    pub logits: bool,
}

/// How a dispatch's second grid dimension follows the call's sizes.
#[derive(Clone, Copy, Debug)]
enum Rows {
    /// One workgroup row per token (embed, conv, rmsnorm).
    Tokens,
    /// One per logits row (the LM head's rmsnorm).
    Outs,
    /// One per MM_TOKENS tokens (matrix × vectors over every token).
    TokenTiles,
    /// One per MM_TOKENS logits rows (lm_head, matrix × vectors).
    OutTiles,
    /// One per the GEMM tile's tokens (GEMM over every token).
    GemmTiles(u32),
    /// One per the GEMM tile's logits rows (lm_head, GEMM).
    GemmOutTiles(u32),
    /// One per sequence (scan).
    Seqs,
    /// One (a call's lead).
    One,
}

impl Rows {
    /// The grid's second dimension for a call of sizes `run`.
    fn count(self, run: &Run) -> u32 {
        match self {
            Rows::Tokens => run.n_tok,
            Rows::Outs => run.n_out,
            Rows::TokenTiles => run.n_tok.div_ceil(MM_TOKENS),
            Rows::OutTiles => run.n_out.div_ceil(MM_TOKENS),
            Rows::GemmTiles(bn) => run.n_tok.div_ceil(bn),
            Rows::GemmOutTiles(bn) => run.n_out.div_ceil(bn),
            Rows::Seqs => run.n_seq,
            Rows::One => 1,
        }
    }
}

/// The longest a call spins for its results (see `GpuModel::spin_until`) before it blocks.
const SPIN_LIMIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Calls of more tokens than this run out_proj as a GEMM, others as matrix × vectors.
const OUT_PROJ_GEMM_MIN: u32 = 128;

/// Which calls run a dispatch: both paths are prerecorded, a call picks one by its sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// Every call.
    Always,
    /// n_tok ≤ GEMM_MIN_TOKENS (matrix × vectors).
    Small,
    /// n_tok > GEMM_MIN_TOKENS (GEMM).
    Big,
    /// n_tok ≤ the value.
    AtMost(u32),
    /// n_tok > the value.
    Above(u32),
    /// n_tok > the first value and ≤ the second.
    Between(u32, u32),
    /// n_out = 1 (LM head, matrix × vector, [`MvShape::one_row_head`]).
    HeadOne,
    /// 1 < n_out ≤ GEMM_MIN_TOKENS (LM head, matrix × vectors).
    HeadFew,
    /// n_out > GEMM_MIN_TOKENS (LM head, GEMM).
    HeadBig,
    /// Sequence 0 has more than one token (a prefill chunk or a mixed call's lead: only the
    /// first sequence of a call can).
    Lead,
}

impl When {
    fn runs(self, run: &Run) -> bool {
        match self {
            When::Always => true,
            When::Small => run.n_tok <= GEMM_MIN_TOKENS,
            When::Big => run.n_tok > GEMM_MIN_TOKENS,
            When::AtMost(n) => run.n_tok <= n,
            When::Above(n) => run.n_tok > n,
            When::Between(lo, hi) => lo < run.n_tok && run.n_tok <= hi,
            When::HeadOne => run.n_out == 1,
            When::HeadFew => 1 < run.n_out && run.n_out <= GEMM_MIN_TOKENS,
            When::HeadBig => run.n_out > GEMM_MIN_TOKENS,
            When::Lead => run.n_tok > run.n_seq,
        }
    }
}

/// The call sizes of a GEMM that runs on calls of more than `above` tokens, each with whether
/// it takes the small-call tile ([`crate::kernels::CoopTile::for_rows`]): on tensor cores, calls up to
/// COOP_SMALL_TOKENS apart from larger ones; else all in one.
fn gemm_calls(above: u32, coop: bool) -> Vec<(When, bool)> {
    if coop && above < COOP_SMALL_TOKENS {
        vec![(When::Between(above, COOP_SMALL_TOKENS), true), (When::Above(COOP_SMALL_TOKENS), false)]
    } else {
        vec![(When::Above(above), false)]
    }
}

/// One recorded dispatch: pipeline, bindings, grid, and what it is (for profiles).
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    x: u32,
    rows: Rows,
    when: When,
    kind: &'static str,
}

impl Dispatch {
    fn on(self, when: When, kind: &'static str) -> Self {
        Dispatch { when, kind, ..self }
    }
}

/// What [`GpuModel::kernel_times`] measured, in µs.
#[derive(Clone, Debug)]
pub struct KernelTimes {
    /// Per dispatch of each kernel kind, replayed alone.
    pub each: Vec<(&'static str, f64)>,
    /// Per call, the whole plan replayed.
    pub whole: f64,
}

/// Where the time of the last call went (see [`GpuModel::set_profiling`]).
#[derive(Clone, Debug, Default)]
pub struct CallProfile {
    /// Building the token table and writing it and the call sizes to the queue.
    pub write: Duration,
    /// Creating the encoder, recording every dispatch and finishing the command buffer.
    pub record: Duration,
    /// `queue.submit`.
    pub submit: Duration,
    /// Waiting for the GPU and mapping what the call reads back.
    pub wait: Duration,
    /// Copying the mapped ids and logits into the caller's slices.
    pub copy: Duration,
    /// How the call's forward pass was recorded: "ahead, exact" (while the previous call ran,
    /// for the same sizes), "ahead, any size" (for any sizes that run the same dispatches, the
    /// workgroup counts read from a buffer) or "in the call".
    pub pass: &'static str,
    /// GPU nanoseconds per kernel kind ("embed", "norm", "in_proj", "conv", "x_proj", "scan",
    /// "out_proj", "lm_head", "argmax"), summed over the call, in order of first use. Empty unless
    /// profiling is on and the device has timestamp queries inside passes.
    pub gpu_ns: Vec<(&'static str, f64)>,
}

/// GPU timestamp queries: one before each dispatch and one after the last.
struct Timer {
    set: wgpu::QuerySet,
    /// Resolved ticks (queries,) u64.
    resolve: wgpu::Buffer,
    /// Mappable copy of `resolve`.
    readback: wgpu::Buffer,
    /// Nanoseconds per tick.
    period: f64,
}

/// Activation buffers, sized for `max_tok` tokens.
struct Acts {
    /// Token table (max_tok + max_batch, 4) u32.
    meta: wgpu::Buffer,
    /// Run sizes (uniform).
    run: wgpu::Buffer,
    /// Hidden states (max_tok, d_model).
    x: wgpu::Buffer,
    /// [u_in | z] (max_tok, 2·d_inner).
    xz: wgpu::Buffer,
    /// [δ | B | C] (max_tok, dt_rank + 2·d_state).
    xdb: wgpu::Buffer,
    /// Conv + SiLU output u (max_tok, d_inner).
    u: wgpu::Buffer,
    /// Gated scan output (max_tok, d_inner).
    y: wgpu::Buffer,
    /// RMSNorm output, the f32 GEMM's input (max_tok, d_model).
    xn: wgpu::Buffer,
    /// The tensor-core GEMM's f16 input, written by rmsnorm (in_proj, LM head) or the conv
    /// (x_proj) just before its GEMM: (max_tok, half_row(max(d_model, d_inner))) halves.
    xh: wgpu::Buffer,
    /// Logits (max_batch, vocab).
    logits: wgpu::Buffer,
    /// Index of each logits row's highest value (max_batch,) u32.
    argmax: wgpu::Buffer,
    /// Each logits row's slice winners (max_batch, ARGMAX_PARTS, 2) u32, between the two argmax
    /// dispatches.
    argmax_parts: wgpu::Buffer,
    /// Mappable copies of what a call reads back, one per call in flight: `argmax`
    /// (max_batch,) u32 at 0, then the wanted logits rows, contiguous, from
    /// [`staged_logits_at`] (up to max_batch × vocab f32).
    staging: [wgpu::Buffer; MAX_IN_FLIGHT],
}

/// Byte offset of the logits rows in the staging buffer: after the ids, 8-aligned so a mapped
/// view of them is aligned for f32 whatever `max_batch` is.
fn staged_logits_at(max_batch: u32) -> u64 {
    (4 * u64::from(max_batch)).next_multiple_of(8)
}

/// Resident recurrent states of every slot.
struct States {
    /// Conv windows (slots, n_layer, d_conv − 1, d_inner).
    conv: wgpu::Buffer,
    /// SSM states (slots, n_layer, d_state, d_inner): the scan's threads (channels) read
    /// consecutive words.
    ssm: wgpu::Buffer,
    /// Bytes per slot in `conv` / `ssm`.
    conv_slot: u64,
    ssm_slot: u64,
}

/// What the fused step takes from the plan: the small vectors and their layout, each kind of
/// layer matrix stacked, and the embedding.
struct FusedInputs {
    smalls: wgpu::Buffer,
    layout: Option<SmallsLayout>,
    layers: [LayerWeights; 4],
    embed: Stacked,
}

/// One kind of a layer's matrix.
type LayerMatrix = for<'l, 'a> fn(&'l Layer<'a>) -> &'l Matrix<'a>;

/// The layer matrices, with their names, in the fused step's binding order.
const LAYER_KINDS: [(&str, LayerMatrix); 4] = [
    ("ssm_in", |l| &l.ssm_in),
    ("ssm_x", |l| &l.ssm_x),
    ("ssm_dt", |l| &l.ssm_dt),
    ("ssm_out", |l| &l.ssm_out),
];

/// A range of a buffer: a whole buffer, or one layer's slice of a stacked matrix.
#[derive(Clone)]
struct Slice {
    buf: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl Slice {
    fn whole(buf: wgpu::Buffer) -> Slice {
        let size = buf.size();
        Slice { buf, offset: 0, size }
    }

    fn binding(&self) -> wgpu::BindingResource<'_> {
        let size = wgpu::BufferSize::new(self.size);
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.buf, offset: self.offset, size })
    }
}

/// One uploaded matrix.
struct GpuMatrix {
    format: Format,
    rows: u32,
    groups: u32,
    data: Slice,
    scales: Option<Slice>,
}

/// Offsets (in floats) of one layer's small f32 vectors inside the `smalls` buffer.
#[derive(Clone, Copy, Default)]
struct SmallOffs {
    attn_norm: u32,
    conv_w: u32,
    conv_b: u32,
    dt_bias: u32,
    a: u32,
    d: u32,
}

/// One model's weights on the GPU plus `slots` resident state slots. Used from one thread.
pub struct GpuModel {
    device: wgpu::Device,
    queue: wgpu::Queue,
    errors: ErrorSlot,
    config: Config,
    slots: u32,
    max_batch: u32,
    max_chunk: u32,
    max_tok: u32,
    acts: Acts,
    states: States,
    plan: Vec<Dispatch>,
    /// Slots to zero at the start of the next call.
    pending_resets: Vec<u32>,
    /// Bytes of weights one call reads (each matrix once; the embedding rows not counted).
    weight_bytes: u64,
    /// Token table scratch, reused by every call.
    meta: Vec<u32>,
    /// Timestamp queries, when the device has them.
    timer: Option<Timer>,
    /// Whether calls write GPU timestamps.
    profiling: bool,
    /// The last call's profile.
    profile: CallProfile,
    /// Kind of each timed dispatch of the last call.
    timed: Vec<&'static str>,
    /// The forward pass recorded ahead for the next call, and what it was recorded for.
    ahead: Option<(Recorded, wgpu::CommandBuffer)>,
    /// The sizes of the last call submitted: how to record ahead, and how many sequences a
    /// [`Feed::Greedy`] row may refer to (None after [`GpuModel::kernel_times`]).
    last_run: Option<Run>,
    /// Workgroup counts (x, y, 1) per plan dispatch for [`Recorded::AnySize`] passes.
    grid: wgpu::Buffer,
    /// Scratch for `grid`'s contents.
    grid_args: Vec<u32>,
    /// Logits rows the next call copies back, as runs (first row, rows), in row order.
    copies: Vec<(u32, u32)>,
    /// Scratch for [`GpuModel::mixed`]'s check that no slot appears twice (slots,).
    in_call: Vec<bool>,
    /// Wait for a call's results by polling, not by sleeping on a fence (hardware adapters).
    spin: bool,
    /// Calls submitted and not yet read back, oldest first.
    flights: std::collections::VecDeque<Flight>,
    /// The single-sequence decode step as one dispatch, when this device and model can run it.
    fused: Option<FusedStep>,
    /// Whether one-row decode calls use `fused` ([`GpuModel::set_fused`]).
    fused_on: bool,
    /// The plan dispatches that follow the fused step (the LM head and argmax of one row).
    fused_head: Vec<usize>,
}

/// Builds buffers and bind groups, checking sizes against the device limits.
struct Builder<'d> {
    dev: &'d wgpu::Device,
    limit: u64,
    pipes: Pipelines,
    /// GEMMs on tensor cores (`gemm_coop.wgsl`), see [`Gpu::tensor_cores`].
    coop: bool,
}

impl Builder<'_> {
    fn check(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        if bytes > self.limit {
            return Err(GpuError::TooLarge { what: format!("{what} ({bytes} bytes)"), limit: self.limit });
        }
        Ok(())
    }

    /// A zeroed storage buffer of `bytes` (at least 4).
    fn storage(&self, what: &str, bytes: u64, extra: wgpu::BufferUsages) -> Result<wgpu::Buffer, GpuError> {
        self.check(what, bytes)?;
        Ok(self.dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
            mapped_at_creation: false,
        }))
    }

    fn init(&self, what: &str, data: &[u8], usage: wgpu::BufferUsages) -> Result<wgpu::Buffer, GpuError> {
        self.check(what, data.len() as u64)?;
        Ok(self.dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents: data,
            usage,
        }))
    }

    fn matrix(&self, what: &str, m: &Matrix<'_>) -> Result<GpuMatrix, GpuError> {
        self.upload(what, pack(m)?)
    }

    /// A packed matrix, uploaded into buffers of its own.
    fn upload(&self, what: &str, p: Packed) -> Result<GpuMatrix, GpuError> {
        let Packed { format, rows, groups, data, scales } = p;
        let usage = wgpu::BufferUsages::STORAGE;
        let data = Slice::whole(self.init(what, &data, usage)?);
        let scales = scales.map(|s| self.init(what, &s, usage).map(Slice::whole)).transpose()?;
        let rows = u32::try_from(rows)
            .map_err(|_| GpuError::TooLarge { what: what.into(), limit: u32::MAX.into() })?;
        Ok(GpuMatrix { format, rows, groups: groups as u32, data, scales })
    }

    /// Every layer's matrix of one kind (`mats`, one per layer) in one buffer, layer after layer,
    /// each layer a slice of it, and those buffers for the fused step; or, when a layer's bytes
    /// are not a multiple of the device's binding-offset alignment (or the stack exceeds the
    /// binding limit), a buffer per layer, and the stack still in host memory for the fused step.
    fn layer_stack(
        &self,
        what: &str,
        mats: &[&Matrix<'_>],
    ) -> Result<(Vec<GpuMatrix>, LayerWeights), GpuError> {
        let align = u64::from(self.dev.limits().min_storage_buffer_offset_alignment);
        let parts = mats.iter().map(|m| pack(m)).collect::<Result<Vec<_>, _>>()?;
        let stacked = stack(&parts)?;
        let layers = mats.len().max(1) as u64;
        let data_len = stacked.data.len() as u64 / layers;
        let scales_len = stacked.scales.as_ref().map(|s| s.len() as u64 / layers);
        let fits = |n: u64| n.is_multiple_of(align) && n * layers <= self.limit;
        // Quantised scales stack without the per-layer padding to whole words, which only
        // matches the per-layer layout when there was none: whole words per layer.
        if !fits(data_len) || !scales_len.is_none_or(fits) {
            let each = parts.into_iter().map(|p| self.upload(what, p)).collect::<Result<_, _>>()?;
            return Ok((each, LayerWeights::Packed(stacked)));
        }
        let usage = wgpu::BufferUsages::STORAGE;
        let data = self.init(what, &stacked.data, usage)?;
        let scales = stacked.scales.as_ref().map(|s| self.init(what, s, usage)).transpose()?;
        let rows = u32::try_from(stacked.rows / mats.len().max(1))
            .map_err(|_| GpuError::TooLarge { what: what.into(), limit: u32::MAX.into() })?;
        let slice = |b: &wgpu::Buffer, len: u64, l: u64| Slice { buf: b.clone(), offset: l * len, size: len };
        let each = (0..layers)
            .map(|l| GpuMatrix {
                format: stacked.format,
                rows,
                groups: stacked.groups as u32,
                data: slice(&data, data_len, l),
                scales: scales.as_ref().zip(scales_len).map(|(b, len)| slice(b, len, l)),
            })
            .collect();
        Ok((each, LayerWeights::Shared(Stacked { format: stacked.format, data, scales })))
    }

    /// A dispatch of `op` over `w` (None: an op without weights), with a uniform holding
    /// `params` at binding 0 and `bufs`. It runs on every call until [`Dispatch::on`] says
    /// otherwise.
    fn dispatch<P: bytemuck::Pod>(
        &mut self,
        op: Op,
        w: Option<&GpuMatrix>,
        params: &P,
        bufs: &[(u32, &wgpu::Buffer)],
        x: u32,
        rows: Rows,
    ) -> Result<Dispatch, GpuError> {
        self.dispatch_shaped(op, Spec::None, w, params, bufs, x, rows)
    }

    /// A `matvec.wgsl` dispatch (`op` one of the Mv ops) of X (cols) · `w`ᵀ, its shape compiled
    /// into the pipeline; the grid covers `w`'s rows.
    #[allow(clippy::too_many_arguments)]
    fn matvec(
        &mut self,
        op: Op,
        w: &GpuMatrix,
        cols: u32,
        (add, head): (bool, bool),
        params: &MvParams,
        bufs: &[(u32, &wgpu::Buffer)],
        rows: Rows,
    ) -> Result<Dispatch, GpuError> {
        let shape = MvShape::new(w.rows, cols, w.groups, params.x_stride, (add, head));
        self.matvec_shaped(op, w, shape, params, bufs, rows)
    }

    /// A `matvec.wgsl` dispatch of `w` with the compiled-in `shape` (see [`Builder::matvec`]).
    fn matvec_shaped(
        &mut self,
        op: Op,
        w: &GpuMatrix,
        shape: MvShape,
        params: &MvParams,
        bufs: &[(u32, &wgpu::Buffer)],
        rows: Rows,
    ) -> Result<Dispatch, GpuError> {
        let x = w.rows.div_ceil(shape.rows_per_group());
        // The vec4 views bind the same buffers at other slots (see MvShape::x4): X 4 → 10, the
        // norm weights 6 → 11, the conv keeping its scalar smalls at 6.
        let mut bufs = bufs.to_vec();
        if shape.x4 {
            let smalls = bufs.iter().find(|(i, _)| *i == 6).map(|&(_, b)| b);
            for e in bufs.iter_mut() {
                match e.0 {
                    4 => e.0 = 10,
                    6 if op == Op::MvNorm => e.0 = 11,
                    _ => {}
                }
            }
            if let (Op::MvNormConv, Some(s)) = (op, smalls) {
                bufs.push((11, s));
            }
        }
        self.dispatch_shaped(op, Spec::Mv(shape), Some(w), params, &bufs, x, rows)
    }

    /// A GEMM dispatch of X (cols) · `w`ᵀ (`gemm_coop.wgsl` on tensor cores, else
    /// `gemm.wgsl`), its shape and tile (for calls of at most COOP_SMALL_TOKENS tokens when
    /// `small`) compiled into the pipeline; the grid covers `w`'s rows and the call's tokens
    /// (`head`: its logits rows). `bufs` names X at 4 (f32) and, when `x_half`, its f16 copy at
    /// 12 (which the coop kernel then reads instead).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        w: &GpuMatrix,
        cols: u32,
        (add, head): (bool, bool),
        params: &GemmParams,
        bufs: &[(u32, &wgpu::Buffer)],
        x_half: bool,
        small: bool,
    ) -> Result<Dispatch, GpuError> {
        let kernel = GemmKernel::for_rows(w.rows, self.coop, small);
        let shape = GemmShape::with_kernel(w.rows, cols, w.groups, params.x_stride, (add, head), kernel)
            .half_x(x_half);
        self.gemm_shaped(shape, w, params, bufs)
    }

    /// The GEMM dispatches of [`Builder::gemm`] for calls of more than `above` tokens, one per
    /// tile ([`gemm_calls`]), each named `kind`.
    #[allow(clippy::too_many_arguments)]
    fn gemms(
        &mut self,
        kind: &'static str,
        above: u32,
        w: &GpuMatrix,
        cols: u32,
        flags: (bool, bool),
        params: &GemmParams,
        bufs: &[(u32, &wgpu::Buffer)],
        x_half: bool,
    ) -> Result<Vec<Dispatch>, GpuError> {
        gemm_calls(above, self.coop)
            .into_iter()
            .map(|(when, small)| Ok(self.gemm(w, cols, flags, params, bufs, x_half, small)?.on(when, kind)))
            .collect()
    }

    /// An RMSNorm dispatch of `bufs` = (run, x, xn, xh, smalls): into xh in f16 when `half`
    /// (`rmsnorm.wgsl` + `norm_f16.wgsl`), else into xn.
    fn norm(
        &mut self,
        half: bool,
        params: &NormParams,
        (run, x, xn, xh, small): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
        rows: Rows,
    ) -> Result<Dispatch, GpuError> {
        let (op, out) = if half { (Op::RmsNormHalf, (12, xh)) } else { (Op::RmsNorm, (5, xn)) };
        self.dispatch(op, None, params, &[(1, run), (4, x), out, (6, small)], 1, rows)
    }

    /// A GEMM dispatch of `shape` (which names the kernel and tile).
    fn gemm_shaped(
        &mut self,
        shape: GemmShape,
        w: &GpuMatrix,
        params: &GemmParams,
        bufs: &[(u32, &wgpu::Buffer)],
    ) -> Result<Dispatch, GpuError> {
        let bn = shape.tile.bn();
        let rows = if shape.head { Rows::GemmOutTiles(bn) } else { Rows::GemmTiles(bn) };
        let (op, x) = (shape.tile.op(), shape.row_tiles());
        // X binds at 4, its vec4 view at 10 (see GemmShape::x4), or its f16 copy at 12 (xh).
        let bufs: Vec<_> = bufs
            .iter()
            .filter(|&&(i, _)| !matches!((i, shape.xh), (4, true) | (12, false)))
            .map(|&(i, b)| (if shape.x4 && i == 4 { 10 } else { i }, b))
            .collect();
        self.dispatch_shaped(op, Spec::Gemm(shape), Some(w), params, &bufs, x, rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_shaped<P: bytemuck::Pod>(
        &mut self,
        op: Op,
        spec: Spec,
        w: Option<&GpuMatrix>,
        params: &P,
        bufs: &[(u32, &wgpu::Buffer)],
        x: u32,
        rows: Rows,
    ) -> Result<Dispatch, GpuError> {
        let pipeline = self.pipes.get(self.dev, op, w.map_or(Format::F32, |w| w.format), spec)?;
        let uni = self.init("params", bytemuck::bytes_of(params), wgpu::BufferUsages::UNIFORM)?;
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uni.as_entire_binding() }];
        if let Some(w) = w {
            entries.push(wgpu::BindGroupEntry { binding: 2, resource: w.data.binding() });
            if let Some(s) = &w.scales {
                entries.push(wgpu::BindGroupEntry { binding: 3, resource: s.binding() });
            }
        }
        entries.extend(
            bufs.iter()
                .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }),
        );
        let bind = self.dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("tinystate"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch { pipeline, bind, x, rows, when: When::Always, kind: "" })
    }
}

/// The small per-layer f32 vectors of every layer, then norm_f, in one array.
fn smalls(m: &Mamba<'_>) -> (Vec<f32>, Vec<SmallOffs>, u32) {
    let mut v = Vec::new();
    // Every vector starts at a multiple of 4 floats, so the matvec kernels can read the norm
    // weights as vec4 (mv_nw4.wgsl).
    let mut push = |s: &[f32]| {
        let off = v.len() as u32;
        v.extend_from_slice(s);
        v.resize(v.len().next_multiple_of(4), 0.0);
        off
    };
    let offs = m
        .layers
        .iter()
        .map(|l| SmallOffs {
            attn_norm: push(l.attn_norm),
            conv_w: push(l.conv_w),
            conv_b: push(l.conv_b),
            dt_bias: push(l.dt_bias),
            // A transposed to (d_state, d_inner): the scan's threads (channels) read consecutive
            // words.
            a: push(&transpose(l.a, m.config.d_state)),
            d: push(l.d),
        })
        .collect();
    let norm_f = push(m.norm_f);
    (v, offs, norm_f)
}

/// Layer 0's offsets in [`smalls`] and the stride between layers, when every layer's vectors
/// are the same distance apart (they are: each layer pushes the same sizes).
fn smalls_layout(offs: &[SmallOffs]) -> Option<SmallsLayout> {
    let o = offs.first()?;
    let stride = offs.get(1).map_or(0, |o1| o1.attn_norm - o.attn_norm);
    let regular = offs.iter().enumerate().all(|(l, x)| {
        let s = l as u32 * stride;
        (x.attn_norm, x.conv_w, x.conv_b, x.dt_bias, x.a, x.d)
            == (o.attn_norm + s, o.conv_w + s, o.conv_b + s, o.dt_bias + s, o.a + s, o.d + s)
    });
    regular.then_some(SmallsLayout {
        attn_norm: o.attn_norm,
        conv_w: o.conv_w,
        conv_b: o.conv_b,
        dt_bias: o.dt_bias,
        a: o.a,
        d: o.d,
        stride,
    })
}

/// `v` as a (rows, cols) row-major matrix, transposed to (cols, rows).
fn transpose(v: &[f32], cols: usize) -> Vec<f32> {
    let rows = v.len() / cols.max(1);
    (0..cols).flat_map(|c| (0..rows).map(move |r| v[r * cols + c])).collect()
}

fn u32_of(what: &str, v: usize) -> Result<u32, GpuError> {
    u32::try_from(v).map_err(|_| GpuError::TooLarge { what: format!("{what} = {v}"), limit: u32::MAX.into() })
}

/// Sums the mapped timestamps of a call (one before each dispatch of kind `timed[i]`, one after
/// the last) per kernel kind into `gpu_ns`, and unmaps them.
fn read_timestamps(
    t: &Timer,
    timed: &[&'static str],
    gpu_ns: &mut Vec<(&'static str, f64)>,
) -> Result<(), GpuError> {
    let bytes = 8 * (timed.len() as u64 + 1);
    let slice = t.readback.slice(..bytes);
    {
        let view =
            slice.get_mapped_range().map_err(|e| GpuError::DeviceLost(format!("mapped range: {e}")))?;
        let tick = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&view[8 * i..8 * i + 8]);
            u64::from_le_bytes(b)
        };
        for (i, &kind) in timed.iter().enumerate() {
            let ns = tick(i + 1).saturating_sub(tick(i)) as f64 * t.period;
            match gpu_ns.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, v)) => *v += ns,
                None => gpu_ns.push((kind, ns)),
            }
        }
    }
    t.readback.unmap();
    Ok(())
}

/// Bytes of a matrix as uploaded.
fn matrix_bytes(w: &GpuMatrix) -> u64 {
    w.data.size + w.scales.as_ref().map_or(0, |s| s.size)
}

impl GpuModel {
    /// Uploads the weights once. `max_batch`: most decode rows per `step`;
    /// `max_chunk`: most tokens per `prefill` call.
    pub fn load(
        gpu: &Gpu,
        model: &Mamba<'_>,
        slots: u32,
        max_batch: u32,
        max_chunk: u32,
    ) -> Result<GpuModel, GpuError> {
        let c = model.config;
        if slots == 0 || max_batch == 0 || max_chunk == 0 {
            return Err(GpuError::BadInput(format!(
                "slots {slots}, max_batch {max_batch}, max_chunk {max_chunk}: each must be at least 1"
            )));
        }
        if c.d_conv < 1 {
            return Err(GpuError::Unsupported { what: "d_conv 0".into() });
        }
        let lim = gpu.device.limits();
        let limit = lim.max_storage_buffer_binding_size.min(lim.max_buffer_size);
        let max_tok = max_batch.max(max_chunk);
        // The embed kernel's grid has one row per token, the scan's one per sequence.
        let max_grid = lim.max_compute_workgroups_per_dimension;
        if max_tok > max_grid {
            return Err(GpuError::TooLarge {
                what: format!("max_batch/max_chunk {max_tok}"),
                limit: max_grid.into(),
            });
        }
        let mut b = Builder { dev: &gpu.device, limit, pipes: Pipelines::default(), coop: gpu.coop };
        let acts = Self::acts(&b, &c, max_tok, max_batch)?;
        let states = Self::states(&b, &c, slots)?;
        let software = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let mut m = GpuModel {
            device: gpu.device.clone(),
            queue: gpu.queue.clone(),
            errors: gpu.errors.clone(),
            config: c,
            slots,
            max_batch,
            max_chunk,
            max_tok,
            acts,
            states,
            plan: Vec::new(),
            pending_resets: Vec::new(),
            weight_bytes: 0,
            meta: Vec::new(),
            timer: None,
            profiling: false,
            profile: CallProfile::default(),
            timed: Vec::new(),
            ahead: None,
            last_run: None,
            grid: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("grid"),
                size: 12,
                usage: wgpu::BufferUsages::INDIRECT,
                mapped_at_creation: false,
            }),
            grid_args: Vec::new(),
            copies: Vec::new(),
            in_call: vec![false; slots as usize],
            flights: std::collections::VecDeque::with_capacity(MAX_IN_FLIGHT),
            // On a CPU adapter (lavapipe) spinning would take a core from the device itself.
            spin: !software,
            fused: None,
            fused_on: false,
            fused_head: Vec::new(),
        };
        let fused_inputs = m.build_plan(&mut b, model, &lim)?;
        m.fused = m.build_fused(gpu, fused_inputs, software);
        let one_row = Run { n_tok: 1, n_seq: 1, out_row0: 0, n_out: 1 };
        let head = |d: &Dispatch| matches!(d.kind, "lm_head" | "argmax") && d.when.runs(&one_row);
        m.fused_head = (0..m.plan.len()).filter(|&i| head(&m.plan[i])).collect();
        // On a CPU adapter the fused step is one workgroup, one core: only tests turn it on.
        m.fused_on = m.fused.is_some() && !software;
        m.grid = b.storage(
            "grid",
            12 * m.plan.len() as u64,
            wgpu::BufferUsages::INDIRECT | wgpu::BufferUsages::COPY_DST,
        )?;
        m.timer = Self::timer(gpu, m.plan.len() as u32 + 1);
        gpu.errors.check()?;
        Ok(m)
    }

    fn acts(b: &Builder<'_>, c: &Config, max_tok: u32, max_batch: u32) -> Result<Acts, GpuError> {
        let t = u64::from(max_tok);
        let f = |n: usize| 4 * t * n as u64;
        let none = wgpu::BufferUsages::empty();
        let logits_bytes = 4 * u64::from(max_batch) * c.vocab as u64;
        Ok(Acts {
            meta: b.storage("meta", 16 * (t + u64::from(max_batch)), none)?,
            run: b.dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("run"),
                size: size_of::<Run>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            x: b.storage("x", f(c.d_model), none)?,
            xz: b.storage("xz", f(2 * c.d_inner), none)?,
            xdb: b.storage("xdb", f(c.dt_rank + 2 * c.d_state), none)?,
            u: b.storage("u", f(c.d_inner), none)?,
            y: b.storage("y", f(c.d_inner), none)?,
            xn: b.storage("xn", f(c.d_model), none)?,
            xh: b.storage("xh", 2 * t * u64::from(Self::xh_row(c)?), none)?,
            logits: b.storage("logits", logits_bytes, wgpu::BufferUsages::COPY_SRC)?,
            argmax: b.storage("argmax", 4 * u64::from(max_batch), wgpu::BufferUsages::COPY_SRC)?,
            argmax_parts: b.storage("argmax parts", 8 * u64::from(max_batch * ARGMAX_PARTS), none)?,
            staging: std::array::from_fn(|_| {
                b.dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size: staged_logits_at(max_batch) + logits_bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }),
        })
    }

    /// Halves per row of `acts.xh`.
    fn xh_row(c: &Config) -> Result<u32, GpuError> {
        Ok(half_row(u32_of("d_inner", c.d_inner.max(c.d_model))?))
    }

    /// Timestamp queries for `n` points, when the device has them inside passes.
    fn timer(gpu: &Gpu, n: u32) -> Option<Timer> {
        let need = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if !gpu.device.features().contains(need) || n > wgpu::QUERY_SET_MAX_QUERIES {
            return None;
        }
        let dev = &gpu.device;
        let bytes = 8 * u64::from(n);
        let buffer = |label, usage| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Timer {
            set: dev.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            }),
            resolve: buffer("timestamps", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer(
                "timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            period: f64::from(gpu.queue.get_timestamp_period()),
        })
    }

    fn states(b: &Builder<'_>, c: &Config, slots: u32) -> Result<States, GpuError> {
        let conv_slot = 4 * (c.n_layer * (c.d_conv - 1) * c.d_inner) as u64;
        let ssm_slot = 4 * (c.n_layer * c.d_inner * c.d_state) as u64;
        let n = u64::from(slots);
        let none = wgpu::BufferUsages::empty();
        // Indices inside the shaders are u32 floats.
        let max_floats = u64::from(u32::MAX);
        if n * ssm_slot / 4 > max_floats {
            return Err(GpuError::TooLarge { what: format!("{slots} SSM state slots"), limit: max_floats });
        }
        Ok(States {
            conv: b.storage("conv state", n * conv_slot, none)?,
            ssm: b.storage("ssm state", n * ssm_slot, none)?,
            conv_slot,
            ssm_slot,
        })
    }

    /// Uploads the weights and records every dispatch of a call.
    fn build_plan(
        &mut self,
        b: &mut Builder<'_>,
        model: &Mamba<'_>,
        lim: &wgpu::Limits,
    ) -> Result<FusedInputs, GpuError> {
        let c = self.config;
        let (small, offs, norm_f) = smalls(model);
        let small = b.init("smalls", bytemuck::cast_slice(&small), wgpu::BufferUsages::STORAGE)?;
        let embed = b.matrix("token_embd", &model.embed)?;
        let output = if same_tensor(&model.embed, &model.output) {
            None
        } else {
            Some(b.matrix("output", &model.output)?)
        };
        let (dm, di, ns, r) =
            (u32_of("d_model", c.d_model)?, c.d_inner as u32, c.d_state as u32, c.dt_rank as u32);
        let xl = r + 2 * ns;
        let eps = c.eps.to_bits();
        let a = &self.acts;
        let mut plan = Vec::new();
        let ep = EmbedParams { groups: embed.groups, cols: dm, x_stride: dm, _pad: 0 };
        let bufs = [(1, &a.run), (4, &a.meta), (5, &a.x), (6, &a.argmax)];
        let x = embed.groups.div_ceil(WG);
        plan.push(
            b.dispatch(Op::Embed, Some(&embed), &ep, &bufs, x, Rows::Tokens)?.on(When::Always, "embed"),
        );
        let mut bytes = 0;
        let (small_path, big_path) = (When::Small, When::Big);
        let stack_of = |(what, kind): (&str, LayerMatrix)| {
            b.layer_stack(what, &model.layers.iter().map(kind).collect::<Vec<_>>())
        };
        let [k_in, k_x, k_dt, k_out] = LAYER_KINDS;
        let ((ins, s_in), (xs, s_x)) = (stack_of(k_in)?, stack_of(k_x)?);
        let ((dts, s_dt), (outs, s_out)) = (stack_of(k_dt)?, stack_of(k_out)?);
        let embed_stacked = Stacked {
            format: embed.format,
            data: embed.data.buf.clone(),
            scales: embed.scales.as_ref().map(|s| s.buf.clone()),
        };
        let layers = ins.into_iter().zip(xs).zip(dts).zip(outs);
        for (l, (o, (((w_in, w_x), w_dt), w_out))) in offs.iter().zip(layers).enumerate() {
            bytes += [&w_in, &w_x, &w_dt, &w_out].iter().map(|w| matrix_bytes(w)).sum::<u64>();
            let l = l as u32;
            let mp =
                |x_stride: u32, o_stride: u32, aux: [u32; 9]| MvParams { x_stride, o_stride, layer: l, aux };
            let gp = |x_stride: u32, o_stride: u32| GemmParams { x_stride, o_stride, _pad: [0; 2] };

            // in_proj: xz = RMSNorm(x)·attn_norm · W_inᵀ (small calls: and the conv below)
            let (dc, nl) = (c.d_conv as u32, c.n_layer as u32);
            let p = mp(dm, 2 * di, [o.attn_norm, eps, o.conv_w, o.conv_b, dc, nl, 0, 0, 0]);
            let bufs = [
                (1, &a.run),
                (4, &a.x),
                (5, &a.xz),
                (6, &small),
                (7, &self.states.conv),
                (8, &a.meta),
                (9, &a.u),
            ];
            let d = b.matvec(Op::MvNormConv, &w_in, dm, (false, false), &p, &bufs, Rows::TokenTiles)?;
            plan.push(d.on(small_path, "in_proj"));
            // On tensor cores the norm writes X in f16, which the GEMM stages as is.
            let half = b.coop;
            let np = NormParams {
                cols: dm,
                x_stride: dm,
                w_off: o.attn_norm,
                eps_bits: eps,
                h_words: half_row(dm) / 2,
                ..Default::default()
            };
            let d = b.norm(half, &np, (&a.run, &a.x, &a.xn, &a.xh, &small), Rows::Tokens)?;
            plan.push(d.on(big_path, "norm"));
            let bufs = [(1, &a.run), (4, &a.xn), (12, &a.xh), (5, &a.xz)];
            plan.extend(b.gemms(
                "in_proj",
                GEMM_MIN_TOKENS,
                &w_in,
                dm,
                (false, false),
                &gp(dm, 2 * di),
                &bufs,
                half,
            )?);

            // conv: u = SiLU(conv1d(xz[:, :d_inner]))
            let cp = ConvParams {
                d_inner: di,
                d_conv: dc,
                n_layer: nl,
                layer: l,
                off_w: o.conv_w,
                off_b: o.conv_b,
                h_words: half_row(di) / 2,
                _pad: 0,
            };
            // With an x_proj GEMM on tensor cores the conv also writes u in f16 for it.
            let bufs = [
                (1, &a.run),
                (4, &a.xz),
                (6, &small),
                (7, &self.states.conv),
                (8, &a.meta),
                (9, &a.u),
                (12, &a.xh),
            ];
            let (op, bufs) = if half { (Op::ConvHalf, &bufs[..]) } else { (Op::Conv, &bufs[..6]) };
            let x = cp.h_words.div_ceil(WG);
            plan.push(b.dispatch(op, None, &cp, bufs, x, Rows::Tokens)?.on(big_path, "conv"));

            // x_proj: xdb = u · W_xᵀ
            let p = mp(di, xl, [0; 9]);
            let bufs = [(1, &a.run), (4, &a.u), (5, &a.xdb)];
            let d = b.matvec(Op::MvPlain, &w_x, di, (false, false), &p, &bufs, Rows::TokenTiles)?;
            // Without tensor cores, matrix × vectors on both paths: as an f32 GEMM this narrow
            // matrix (r + 2N rows) leaves most of the GPU idle (H200, the former 32×32-tile
            // GEMM: 360 µs per layer at B=64). The coop GEMM (16×16 tile, K split four ways)
            // wins only on large calls (H200, F16: 7.6 vs 12.5 µs at B=256, 10.3 vs 6.8 at 64).
            if b.coop {
                plan.push(d.on(When::AtMost(OUT_PROJ_GEMM_MIN), "x_proj"));
                let bufs = [(1, &a.run), (4, &a.u), (12, &a.xh), (5, &a.xdb)];
                let (above, p) = (OUT_PROJ_GEMM_MIN, gp(di, xl));
                plan.extend(b.gemms("x_proj", above, &w_x, di, (false, false), &p, &bufs, half)?);
            } else {
                plan.push(d.on(When::Always, "x_proj"));
            }

            // scan: y = scan(u, Δ, A, B, C, D) · SiLU(z), then the conv window shift
            let sp = ScanParams {
                d_inner: di,
                n_state: ns,
                dt_rank: r,
                dt_groups: w_dt.groups,
                n_layer: c.n_layer as u32,
                layer: l,
                d_conv: c.d_conv as u32,
                dbc_rms: c.dt_b_c_rms as u32,
                eps_bits: eps,
                off_dt_bias: o.dt_bias,
                off_a: o.a,
                off_d: o.d,
                xdb_stride: xl,
                max_tok: self.max_tok,
                _pad: [0; 2],
            };
            let bufs = [
                (1, &a.run),
                (4, &a.xz),
                (5, &a.xdb),
                (6, &small),
                (7, &self.states.conv),
                (8, &a.meta),
                (9, &a.u),
                (10, &self.states.ssm),
                (11, &a.y),
            ];
            let spec = Spec::Scan { n_state: ns, dt_rank: r };
            let x = di.div_ceil(SCAN_CHANNELS);
            let d = b.dispatch_shaped(Op::Scan, spec, Some(&w_dt), &sp, &bufs, x, Rows::Seqs)?;
            plan.push(d.on(When::Always, "scan"));
            // A multi-token lead (sequence 0: a prompt's piece) has its own kernel, which
            // scan.wgsl leaves it to.
            let x = di.div_ceil(LEAD_SCAN_CHANNELS);
            let d = b.dispatch_shaped(Op::ScanLead, spec, Some(&w_dt), &sp, &bufs, x, Rows::One)?;
            plan.push(d.on(When::Lead, "scan"));

            // out_proj: x += y · W_outᵀ
            let p = mp(di, dm, [0; 9]);
            let bufs = [(1, &a.run), (4, &a.y), (5, &a.x)];
            let d = b.matvec(Op::MvPlain, &w_out, di, (true, false), &p, &bufs, Rows::TokenTiles)?;
            // An f32 GEMM over this narrow matrix (d_model rows) keeps too few workgroups busy
            // until the batch is large (H200, F16, the former 32×32-tile GEMM: 2.7 vs 1.5 ms per
            // call at B=64, 3.2 vs 5.6 ms at B=256; the threshold wants re-measuring with the
            // 32×64 tile GemmTile::for_rows now gives it). The coop GEMM takes every GEMM call
            // (H200, F16: 17 vs 28 µs at B=64).
            let above = if b.coop { GEMM_MIN_TOKENS } else { OUT_PROJ_GEMM_MIN };
            plan.push(d.on(When::AtMost(above), "out_proj"));
            plan.extend(b.gemms("out_proj", above, &w_out, di, (true, false), &gp(di, dm), &bufs, false)?);
        }
        let head = output.as_ref().unwrap_or(&embed);
        bytes += matrix_bytes(head);
        let p =
            MvParams { x_stride: dm, o_stride: head.rows, layer: 0, aux: [norm_f, eps, 0, 0, 0, 0, 0, 0, 0] };
        let max_x = lim.max_compute_workgroups_per_dimension;
        let x =
            head.rows.div_ceil(MvShape::new(head.rows, dm, head.groups, dm, (false, true)).rows_per_group());
        if x > max_x || di.div_ceil(SCAN_CHANNELS) > max_x || embed.groups.div_ceil(WG) > max_x {
            return Err(GpuError::TooLarge {
                what: format!("workgroup grid of {x} for the LM head"),
                limit: max_x.into(),
            });
        }
        let bufs = [(1, &a.run), (4, &a.x), (5, &a.logits), (6, &small)];
        let one = MvShape::one_row_head(head.rows, dm, head.groups, dm);
        let d = b.matvec_shaped(Op::MvNorm, head, one, &p, &bufs, Rows::OutTiles)?;
        plan.push(d.on(When::HeadOne, "lm_head"));
        let d = b.matvec(Op::MvNorm, head, dm, (false, true), &p, &bufs, Rows::OutTiles)?;
        plan.push(d.on(When::HeadFew, "lm_head"));
        // The LM head's GEMM reads f32 X even on tensor cores: its 128 × 64 tile ran slower on
        // the f16 copy (H200, F16: 260 vs 226 µs at B=256, 75 vs 62 at B=64; in_proj the other
        // way, 19.7 vs 21.5 at 256).
        let np = NormParams {
            cols: dm,
            x_stride: dm,
            w_off: norm_f,
            eps_bits: eps,
            head: 1,
            ..Default::default()
        };
        let d = b.norm(false, &np, (&a.run, &a.x, &a.xn, &a.xh, &small), Rows::Outs)?;
        plan.push(d.on(When::HeadBig, "norm"));
        let p = GemmParams { x_stride: dm, o_stride: head.rows, _pad: [0; 2] };
        let bufs = [(1, &a.run), (4, &a.xn), (5, &a.logits)];
        let d = b.gemm(head, dm, (false, true), &p, &bufs, false, false)?;
        plan.push(d.on(When::HeadBig, "lm_head"));
        self.push_argmax(b, &mut plan)?;
        self.plan = plan;
        self.weight_bytes = bytes;
        let layers = [s_in, s_x, s_dt, s_out];
        Ok(FusedInputs { smalls: small, layout: smalls_layout(&offs), layers, embed: embed_stacked })
    }

    /// The fused single-sequence step (`fused.rs`), or None with the reason logged to stderr
    /// when this device or model cannot run it.
    fn build_fused(&self, gpu: &Gpu, inputs: FusedInputs, software: bool) -> Option<FusedStep> {
        if !gpu.coherent {
            eprintln!("tinystate-gpu: no fused single-sequence step: no @coherent storage on this device");
            return None;
        }
        let split = Split::for_device(&self.config, software)?;
        let layout = inputs.layout?;
        let a = &self.acts;
        let shared = Shared {
            smalls: &inputs.smalls,
            meta: &a.meta,
            argmax: &a.argmax,
            conv: &self.states.conv,
            ssm: &self.states.ssm,
            x: &a.x,
        };
        let weights = (inputs.layers, inputs.embed);
        match FusedStep::new(&gpu.device, gpu.subgroups32, split, &self.config, layout, shared, weights) {
            Ok(f) => Some(f),
            Err(why) => {
                eprintln!("tinystate-gpu: no fused single-sequence step: {why}");
                None
            }
        }
    }

    /// Records the argmax of every logits row (the greedy token), after the LM head: one
    /// workgroup per row, into `acts.argmax`.
    fn push_argmax(&self, b: &mut Builder<'_>, plan: &mut Vec<Dispatch>) -> Result<(), GpuError> {
        let vocab = u32_of("vocab", self.config.vocab)?;
        let a = &self.acts;
        // Rows are `vocab` apart: the layout the read-back copies assume.
        for d in argmax_dispatches(b, (&a.run, &a.logits, &a.argmax_parts, &a.argmax), vocab, vocab)? {
            plan.push(d.on(When::Always, "argmax"));
        }
        Ok(())
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.config.vocab
    }

    /// Number of state slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Most decode rows per [`GpuModel::step`].
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }

    /// Most tokens per [`GpuModel::prefill`].
    pub fn max_chunk(&self) -> u32 {
        self.max_chunk
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Compute dispatches of a single-row decode step, all in one compute pass (see
    /// [`GpuModel::dispatches_for`] for other sizes).
    pub fn dispatches_per_call(&self) -> usize {
        self.dispatches_for(1, 1)
    }

    /// Compute dispatches of a call over `n_tok` token rows with `n_out` logits rows (a step of
    /// B rows: (B, B); a prefill chunk of n tokens: (n, 1)). Batches past a threshold take the
    /// GEMM kernels, which add a norm dispatch per layer.
    pub fn dispatches_for(&self, n_tok: u32, n_out: u32) -> usize {
        let run = Run { n_tok, n_seq: 1, out_row0: 0, n_out };
        self.plan.iter().filter(|d| d.when.runs(&run)).count()
    }

    /// Runs one-sequence, one-token decode calls as the fused step (one dispatch, `fused.rs`)
    /// when `on` and this device and model can; returns whether they now do. On by default on
    /// hardware adapters; off on a CPU adapter, where the step would be one workgroup on one
    /// core.
    pub fn set_fused(&mut self, on: bool) -> bool {
        self.fused_on = on && self.fused.is_some();
        self.fused_on
    }

    /// The fused step's workgroups when one-row calls run it, else None.
    pub fn fused_workgroups(&self) -> Option<u32> {
        self.fused.as_ref().filter(|_| self.fused_on).map(|f| f.split().groups)
    }

    /// Whether a call waits for its results by polling the device (on by default for hardware
    /// adapters: lower latency, one busy core while the GPU runs) or by sleeping on a fence.
    pub fn set_spin_wait(&mut self, on: bool) {
        self.spin = on;
    }

    /// Turns GPU timestamps on or off for later calls (they cost a little GPU time). Returns
    /// whether the device can write them; CPU phases are timed either way (see
    /// [`GpuModel::last_profile`]).
    pub fn set_profiling(&mut self, on: bool) -> bool {
        self.profiling = on;
        self.timer.is_some()
    }

    /// Where the time of the last successful call went.
    pub fn last_profile(&self) -> &CallProfile {
        &self.profile
    }

    /// Bytes of weight matrices one call reads (each once; embedding rows not counted unless tied
    /// to the LM head).
    pub fn weight_bytes_per_call(&self) -> u64 {
        self.weight_bytes
    }

    /// Microseconds per dispatch of each kernel kind, each replayed `reps` times back to back
    /// (one pipeline, one bind group, a barrier between repeats) in one pass, for a call of
    /// `n_tok` decode rows: the kernel's own cost, apart from switching between kernels. The
    /// second value replays the whole plan `reps` times in one pass (µs per call). Run a
    /// [`GpuModel::step`] of `n_tok` rows first: it writes the token table these replays read.
    /// They overwrite activations and states: a profiling tool, not for serving.
    pub fn kernel_times(&mut self, n_tok: u32, reps: u32) -> Result<KernelTimes, GpuError> {
        if !self.flights.is_empty() {
            return Err(GpuError::BadInput("a call is in flight: finish it first".into()));
        }
        // The replays overwrite the greedy tokens a Feed::Greedy row would read: no last call.
        self.last_run = None;
        let run = Run { n_tok, n_seq: n_tok, out_row0: 0, n_out: n_tok };
        let grid = |d: &Dispatch| d.rows.count(&run);
        let time = |ds: &[&Dispatch], reps: u32| -> Result<f64, GpuError> {
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for _ in 0..reps {
                    for d in ds {
                        pass.set_pipeline(&d.pipeline);
                        pass.set_bind_group(0, &d.bind, &[]);
                        pass.dispatch_workgroups(d.x, grid(d), 1);
                    }
                }
            }
            let cmd = enc.finish();
            let t = Instant::now();
            self.queue.submit([cmd]);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
            Ok(t.elapsed().as_secs_f64() * 1e6)
        };
        let live: Vec<&Dispatch> = self.plan.iter().filter(|d| d.when.runs(&run)).collect();
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        for d in &live {
            if out.iter().any(|(k, _)| *k == d.kind) {
                continue;
            }
            let one = time(&[d], 1)?;
            let many = time(&[d], reps + 1)?;
            out.push((d.kind, (many - one) / f64::from(reps)));
        }
        let one = time(&live, 1)?;
        let many = time(&live, reps + 1)?;
        self.errors.check()?;
        Ok(KernelTimes { each: out, whole: (many - one) / f64::from(reps) })
    }

    /// Zeroes a slot's state (a new sequence). Takes effect before the next step/prefill.
    pub fn reset(&mut self, slot: SlotId) -> Result<(), GpuError> {
        self.check_slot(slot)?;
        if !self.pending_resets.contains(&slot.0) {
            self.pending_resets.push(slot.0);
        }
        Ok(())
    }

    /// One decode step for every row, one submission. Slots in a batch are distinct. Writes
    /// each row's greedy token (the index of its highest logit, the lowest among equals; NaN
    /// counts as −∞) into `argmax` (rows.len()), and the logits of the rows that want them into
    /// `logits` (those rows × vocab, row-major, in the order of `rows`, contiguous).
    pub fn step(
        &mut self,
        rows: &[StepRow],
        argmax: &mut [TokenId],
        logits: &mut [f32],
    ) -> Result<(), GpuError> {
        if rows.is_empty() {
            return Err(GpuError::BadInput(format!("batch of 0 rows; allowed 1..={}", self.max_batch)));
        }
        self.mixed(None, rows, argmax, logits)
    }

    /// A prefill chunk of 1..=max_chunk tokens for one slot. Returns the greedy token after the
    /// last position (as [`GpuModel::step`]); writes that position's logits (vocab) into
    /// `logits` if given.
    pub fn prefill(
        &mut self,
        slot: SlotId,
        tokens: &[TokenId],
        logits: Option<&mut [f32]>,
    ) -> Result<TokenId, GpuError> {
        let lead = Lead { slot, tokens, logits: logits.is_some() };
        let mut id = [TokenId(0)];
        self.mixed(Some(lead), &[], &mut id, logits.unwrap_or_default())?;
        Ok(id[0])
    }

    /// One call over a prompt's piece (`lead`, first) and decode rows (one token each), every
    /// sequence in its own slot: a prompt advances inside a decode step instead of taking a call
    /// of its own. Outputs are in sequence order, the lead's first: each one's greedy token into
    /// `argmax` (one per sequence), the logits of those that want them into `logits` (those
    /// sequences × vocab). At most `max_batch` sequences and `max(max_batch, max_chunk)` tokens.
    ///
    /// Why the lead goes first: the LM head reads one contiguous run of token rows, and with
    /// the piece first the last token of every sequence (the piece's, then each row's) is such
    /// a run.
    pub fn mixed(
        &mut self,
        lead: Option<Lead<'_>>,
        rows: &[StepRow],
        argmax: &mut [TokenId],
        logits: &mut [f32],
    ) -> Result<(), GpuError> {
        if !self.flights.is_empty() {
            return Err(GpuError::BadInput("a call is in flight: finish it first".into()));
        }
        // The caller's buffers are checked before anything runs.
        check_ids(argmax, rows.len() + usize::from(lead.is_some()))?;
        self.check_logits(logits, logits_wanted(lead, rows))?;
        self.submit(lead, rows)?;
        self.finish(argmax, logits)
    }

    /// [`GpuModel::mixed`] without waiting: submits the call and returns; [`GpuModel::finish`]
    /// reads its results back. Up to [`MAX_IN_FLIGHT`] calls may be in flight, so a caller
    /// can queue the next call while the GPU runs this one, and rows of the next may take their
    /// tokens from this one's greedy tokens on the GPU ([`Feed::Greedy`]): the GPU runs
    /// them back to back. Calls run in submission order. Not while profiling (its timestamps
    /// have one read-back buffer).
    pub fn submit(&mut self, lead: Option<Lead<'_>>, rows: &[StepRow]) -> Result<(), GpuError> {
        if self.flights.len() >= MAX_IN_FLIGHT || (self.profiling && !self.flights.is_empty()) {
            return Err(GpuError::BadInput(format!(
                "{} calls in flight: finish one first",
                self.flights.len()
            )));
        }
        let t0 = Instant::now();
        let (run, wanted) = self.table(lead, rows)?;
        self.launch(t0, run, wanted)
    }

    /// Reads back the oldest call in flight: each sequence's greedy token into `argmax` and the
    /// wanted logits rows into `logits`, as [`GpuModel::mixed`] does.
    pub fn finish(&mut self, argmax: &mut [TokenId], logits: &mut [f32]) -> Result<(), GpuError> {
        let Some(&f) = self.flights.front() else {
            return Err(GpuError::BadInput("no call in flight".into()));
        };
        check_ids(argmax, f.ids)?;
        self.check_logits(logits, f.logits)?;
        self.flights.pop_front();
        let t3 = Instant::now();
        let timer = self.timer.as_ref().zip(f.queries);
        let also = timer.map(|(t, q)| (&t.readback, 8 * u64::from(q)));
        let (t4, t5, flag) = self.read_back(f.staging, argmax, logits, also, f.fused)?;
        if flag != 0 {
            // Its workgroups were not all resident at once (another process holds part of the
            // GPU?): the sequence's state is half-updated. Later calls take the plan.
            self.fused_on = false;
            return Err(GpuError::DeviceLost(
                "the fused single-sequence step was abandoned (its workgroups could not all run at \
                 once); fused steps are now off for this model"
                    .into(),
            ));
        }
        self.profile.wait = t4 - t3;
        self.profile.copy = t5 - t4;
        self.profile.gpu_ns.clear();
        if let Some((t, _)) = timer {
            read_timestamps(t, &self.timed, &mut self.profile.gpu_ns)?;
        }
        self.errors.check()
    }

    /// Calls submitted and not yet read back.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Checks a call's inputs and writes its token table into `self.meta`: the call's sizes and
    /// how many sequences want logits.
    fn table(&mut self, lead: Option<Lead<'_>>, rows: &[StepRow]) -> Result<(Run, usize), GpuError> {
        let k = lead.map_or(0, |l| l.tokens.len());
        let seqs = rows.len() + usize::from(lead.is_some());
        if let Some(l) = lead
            && (l.tokens.is_empty() || k > self.max_chunk as usize)
        {
            return Err(GpuError::BadInput(format!(
                "prefill chunk of {k} tokens; allowed 1..={}",
                self.max_chunk
            )));
        }
        if seqs == 0 || seqs > self.max_batch as usize {
            return Err(GpuError::BadInput(format!("batch of {seqs} rows; allowed 1..={}", self.max_batch)));
        }
        if k + rows.len() > self.max_tok as usize {
            return Err(GpuError::BadInput(format!(
                "{} tokens in one call; allowed {}",
                k + rows.len(),
                self.max_tok
            )));
        }
        let wants = lead.iter().map(|l| l.logits).chain(rows.iter().map(|r| r.logits));
        let wanted = logits_wanted(lead, rows);
        let slots = lead.iter().map(|l| l.slot).chain(rows.iter().map(|r| r.slot));
        slots.clone().try_for_each(|s| self.check_slot(s))?;
        self.check_distinct(slots)?;
        lead.iter().flat_map(|l| l.tokens.iter()).try_for_each(|&t| self.check_token(t))?;
        rows.iter().try_for_each(|r| self.check_feed(r.token))?;
        let mt = self.max_tok as usize;
        let meta = &mut self.meta;
        meta.clear();
        meta.resize(4 * (mt + seqs), 0);
        // Tokens: (id, slot, first token of its sequence, position in it); sequences: (slot,
        // first token, length, 0). See common.wgsl; embed.wgsl reads FROM_PREV ids.
        if let Some(l) = lead {
            for (i, t) in l.tokens.iter().enumerate() {
                meta[4 * i..4 * i + 4].copy_from_slice(&[t.0, l.slot.0, 0, i as u32]);
            }
            meta[4 * mt..4 * mt + 4].copy_from_slice(&[l.slot.0, 0, k as u32, 0]);
        }
        let s0 = usize::from(lead.is_some());
        for (i, r) in rows.iter().enumerate() {
            let t = k + i;
            let id = match r.token {
                Feed::Token(id) => id.0,
                Feed::Greedy(j) => FROM_PREV | j,
            };
            meta[4 * t..4 * t + 4].copy_from_slice(&[id, r.slot.0, t as u32, 0]);
            let s = 4 * (mt + s0 + i);
            meta[s..s + 4].copy_from_slice(&[r.slot.0, t as u32, 1, 0]);
        }
        logits_runs(wants, &mut self.copies);
        let run = Run {
            n_tok: (k + rows.len()) as u32,
            n_seq: seqs as u32,
            out_row0: k.saturating_sub(1) as u32,
            n_out: seqs as u32,
        };
        Ok((run, wanted))
    }

    /// Err if a slot appears twice in `slots` (all in range): a mark per slot, not a pairwise
    /// comparison, which at 256 rows was 32,640 of them on every step.
    fn check_distinct(&mut self, slots: impl Iterator<Item = SlotId> + Clone) -> Result<(), GpuError> {
        let twice = slots.clone().find(|s| std::mem::replace(&mut self.in_call[s.0 as usize], true));
        slots.for_each(|s| self.in_call[s.0 as usize] = false);
        match twice {
            Some(s) => Err(GpuError::BadInput(format!("slot {} appears twice in one batch", s.0))),
            None => Ok(()),
        }
    }

    fn check_slot(&self, slot: SlotId) -> Result<(), GpuError> {
        if slot.0 >= self.slots {
            return Err(GpuError::BadInput(format!("slot {} out of range (slots: {})", slot.0, self.slots)));
        }
        Ok(())
    }

    /// A row's token in range, or a [`Feed::Greedy`] that names a sequence of the last call.
    fn check_feed(&self, f: Feed) -> Result<(), GpuError> {
        match (f, self.last_run.map(|r| r.n_seq)) {
            (Feed::Token(t), _) => self.check_token(t),
            (Feed::Greedy(k), Some(n)) if k < n => Ok(()),
            (Feed::Greedy(k), n) => Err(GpuError::BadInput(format!(
                "a row feeds the last call's greedy token of sequence {k}; it had {} sequences",
                n.unwrap_or(0)
            ))),
        }
    }

    fn check_token(&self, t: TokenId) -> Result<(), GpuError> {
        if t.index() >= self.config.vocab {
            return Err(GpuError::BadInput(format!(
                "token id {t} outside the vocabulary (size {})",
                self.config.vocab
            )));
        }
        Ok(())
    }

    fn check_logits(&self, logits: &[f32], rows: usize) -> Result<(), GpuError> {
        let want = rows * self.config.vocab;
        if logits.len() != want {
            return Err(GpuError::BadInput(format!(
                "logits buffer holds {} floats; need {want}",
                logits.len()
            )));
        }
        Ok(())
    }

    /// Writes the token table (`self.meta`, built since `t0`), records and submits the plan's
    /// dispatches for `run` with the copies of its ids and `wanted` logits rows into the next
    /// staging buffer, and records the next call's pass ahead while the GPU runs this one.
    fn launch(&mut self, t0: Instant, run: Run, wanted: usize) -> Result<(), GpuError> {
        self.errors.check()?;
        self.queue.write_buffer(&self.acts.meta, 0, bytemuck::cast_slice(&self.meta));
        self.queue.write_buffer(&self.acts.run, 0, bytemuck::bytes_of(&run));
        let t1 = Instant::now();
        let mut enc =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("call") });
        self.record_resets(&mut enc);
        let profiled = self.profiling && self.timer.is_some();
        self.profile.pass = "in the call";
        // Calls in flight hold consecutive buffers: the one after the newest is free.
        let staging = self.flights.back().map_or(0, |f| (f.staging + 1) % MAX_IN_FLIGHT);
        let fused = self.fused_on && !profiled && Self::one_row(run);
        let ahead = self.ahead.take();
        let forward = if let Some(f) = self.fused.as_ref().filter(|_| fused) {
            self.profile.pass = "fused";
            let mut enc = self.device.create_command_encoder(&Default::default());
            // The flag lands in the ids' second word: a one-row call reads back only the first.
            f.record(&mut enc, &self.acts.staging[staging], 4);
            // The plan's LM head and argmax, on the h the step left in `acts.x`.
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for d in self.fused_head.iter().map(|&i| &self.plan[i]) {
                    pass.set_pipeline(&d.pipeline);
                    pass.set_bind_group(0, &d.bind, &[]);
                    pass.dispatch_workgroups(d.x, d.rows.count(&run), 1);
                }
            }
            Some(enc.finish())
        } else {
            self.plan_forward(run, profiled, ahead, &mut enc)
        };
        let timer = self.timer.as_ref().filter(|_| self.profiling);
        let mut tail = self.device.create_command_encoder(&Default::default());
        self.record_copies(&mut tail, run.n_out, staging);
        let queries = self.timed.len() as u32 + 1;
        if let Some(t) = timer {
            tail.resolve_query_set(&t.set, 0..queries, &t.resolve, 0);
            tail.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 8 * u64::from(queries));
        }
        let cmds = std::iter::once(enc.finish()).chain(forward).chain([tail.finish()]);
        let t2 = Instant::now();
        self.queue.submit(cmds);
        let t3 = Instant::now();
        self.flights.push_back(Flight {
            staging,
            ids: run.n_out as usize,
            logits: wanted,
            queries: timer.map(|_| queries),
            fused,
        });
        // A single stream's next call is fused too: nothing to record ahead.
        if timer.is_none() && !fused {
            // Record the next call's pass while the GPU runs this one (~100–150 dispatches cost
            // 0.3–0.4 ms of CPU on the H200's host): for these exact sizes while they repeat
            // (a single stream), else for any sizes that run the same dispatches (a batcher's
            // steps, whose row count changes from step to step).
            let next = match self.last_run {
                Some(last) if last == run => Recorded::Exact(run),
                _ => Recorded::AnySize(run),
            };
            self.ahead = Some((next, self.record_forward(next)));
        }
        // Set only once the call went in: it is what the next call's Feed::Greedy rows read.
        self.last_run = Some(run);
        self.profile.write = t1 - t0;
        self.profile.record = t2 - t1;
        self.profile.submit = t3 - t2;
        Ok(())
    }

    /// Whether a call of `run` is one sequence's one-token decode step (what the fused step runs).
    fn one_row(run: Run) -> bool {
        run.n_tok == 1 && run.n_seq == 1
    }

    /// The plan's forward pass for `run`: the pass recorded ahead when it serves, else recorded
    /// now; a profiled call records inline into `enc`, with a timestamp before each dispatch.
    fn plan_forward(
        &mut self,
        run: Run,
        profiled: bool,
        ahead: Option<(Recorded, wgpu::CommandBuffer)>,
        enc: &mut wgpu::CommandEncoder,
    ) -> Option<wgpu::CommandBuffer> {
        match (profiled, ahead) {
            (false, Some((r, cmd))) if r.serves(&run, &self.plan) => {
                self.profile.pass = "ahead, exact";
                if let Recorded::AnySize(_) = r {
                    write_grid(&self.plan, run, &mut self.grid_args, (&self.queue, &self.grid));
                    self.profile.pass = "ahead, any size";
                }
                Some(cmd)
            }
            (false, _) => Some(self.record_forward(Recorded::Exact(run))),
            (true, _) => {
                record_pass(&self.plan, &mut self.timed, enc, run, self.timer.as_ref());
                None
            }
        }
    }

    /// The forward pass as its own command buffer (no timestamps).
    fn record_forward(&self, how: Recorded) -> wgpu::CommandBuffer {
        let mut enc =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        match how {
            Recorded::Exact(run) => record_pass(&self.plan, &mut Vec::new(), &mut enc, run, None),
            Recorded::AnySize(like) => record_any_size(&self.plan, like, &mut enc, &self.grid),
        }
        enc.finish()
    }

    fn record_resets(&mut self, enc: &mut wgpu::CommandEncoder) {
        let st = &self.states;
        for s in self.pending_resets.drain(..) {
            let s = u64::from(s);
            if st.conv_slot > 0 {
                enc.clear_buffer(&st.conv, s * st.conv_slot, Some(st.conv_slot));
            }
            enc.clear_buffer(&st.ssm, s * st.ssm_slot, Some(st.ssm_slot));
        }
    }

    /// Records the copies into staging buffer `staging`: the ids of the `n_out` rows at 0, then
    /// the logits rows of `self.copies`, contiguous, from [`staged_logits_at`].
    fn record_copies(&self, enc: &mut wgpu::CommandEncoder, n_out: u32, staging: usize) {
        let a = &self.acts;
        let to = &a.staging[staging];
        enc.copy_buffer_to_buffer(&a.argmax, 0, to, 0, 4 * u64::from(n_out));
        let row = 4 * self.config.vocab as u64;
        let mut at = staged_logits_at(self.max_batch);
        for &(first, rows) in &self.copies {
            let bytes = u64::from(rows) * row;
            enc.copy_buffer_to_buffer(&a.logits, u64::from(first) * row, to, at, bytes);
            at += bytes;
        }
    }

    /// Polls the device without blocking until `wanted` map callbacks have sent on `rx` (into
    /// `done`), for at most [`SPIN_LIMIT`]. A blocking wait sleeps on a fence and wakes late:
    /// on the H200 spinning took a decode step from 949 to 813 µs at B=1 (7,499 to 7,318 µs at
    /// B=256).
    fn spin_until(
        &self,
        rx: &mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
        wanted: usize,
        done: &mut Vec<Result<(), wgpu::BufferAsyncError>>,
    ) -> Result<(), GpuError> {
        let start = Instant::now();
        while done.len() < wanted && start.elapsed() < SPIN_LIMIT {
            self.device.poll(wgpu::PollType::Poll).map_err(|e| GpuError::DeviceLost(e.to_string()))?;
            done.extend(rx.try_iter());
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// Maps what the call copied into the staging buffer (and `also`, mapped until the caller
    /// unmaps it), waits, copies the ids to `ids` and the logits rows to `logits`. Returns when
    /// the wait and the copy ended.
    fn read_back(
        &self,
        staging: usize,
        ids: &mut [TokenId],
        logits: &mut [f32],
        also: Option<(&wgpu::Buffer, u64)>,
        fused: bool,
    ) -> Result<(Instant, Instant, u32), GpuError> {
        let logits_at = staged_logits_at(self.max_batch);
        // Only the ids when no logits are wanted: 4 bytes a row (and a fused step's flag after
        // its one id).
        let bytes = match logits.len() {
            0 => 4 * ids.len().max(if fused { 2 } else { 1 }) as u64,
            n => logits_at + 4 * n as u64,
        };
        let (tx, rx) = mpsc::channel();
        let slice = self.acts.staging[staging].slice(..bytes);
        let tx2 = tx.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            // The receiver lives until after the poll below; a failed send only means it is gone.
            let _ = tx.send(r);
        });
        let mut wanted = 1;
        if let Some((buf, n)) = also {
            buf.slice(..n).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx2.send(r);
            });
            wanted = 2;
        }
        let mut done = Vec::with_capacity(wanted);
        if self.spin {
            self.spin_until(&rx, wanted, &mut done)?;
        }
        if done.len() < wanted {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        }
        done.extend(rx.try_iter());
        if done.len() < wanted {
            return Err(GpuError::DeviceLost("map_async did not complete".into()));
        }
        if let Some(Err(e)) = done.into_iter().find(|r| r.is_err()) {
            return Err(GpuError::DeviceLost(format!("map_async: {e}")));
        }
        let waited = Instant::now();
        let mut flag = 0;
        {
            let view =
                slice.get_mapped_range().map_err(|e| GpuError::DeviceLost(format!("mapped range: {e}")))?;
            let src: &[u8] = &view;
            for (id, c) in ids.iter_mut().zip(src.chunks_exact(4)) {
                *id = TokenId(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
            if fused {
                flag = u32::from_le_bytes([src[4], src[5], src[6], src[7]]);
            }
            if !logits.is_empty() {
                copy_f32(&src[logits_at as usize..], logits);
            }
        }
        self.acts.staging[staging].unmap();
        Ok((waited, Instant::now(), flag))
    }
}

/// `out.len()` little-endian f32s from the front of `src`.
fn copy_f32(src: &[u8], out: &mut [f32]) {
    let src = &src[..4 * out.len()];
    match bytemuck::try_cast_slice::<u8, f32>(src) {
        // GPU buffers are little-endian: a plain copy where the host is too.
        Ok(v) if cfg!(target_endian = "little") => out.copy_from_slice(v),
        _ => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// The rows whose flag is set, as runs of consecutive rows (first, count) into `runs`, so
/// a batch in which every row wants logits is one copy.
fn logits_runs(wants: impl Iterator<Item = bool>, runs: &mut Vec<(u32, u32)>) {
    runs.clear();
    for (i, want) in wants.enumerate() {
        let i = i as u32;
        match runs.last_mut() {
            _ if !want => {}
            Some((first, n)) if *first + *n == i => *n += 1,
            _ => runs.push((i, 1)),
        }
    }
}

/// Records the dispatches of `plan` that run for `run` in one compute pass; with `timer`, a
/// timestamp before each (its kind pushed to `timed`) and one after the last.
fn record_pass(
    plan: &[Dispatch],
    timed: &mut Vec<&'static str>,
    enc: &mut wgpu::CommandEncoder,
    run: Run,
    timer: Option<&Timer>,
) {
    timed.clear();
    let mut pass = enc
        .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
    for d in plan.iter().filter(|d| d.when.runs(&run)) {
        if let Some(t) = timer {
            pass.write_timestamp(&t.set, timed.len() as u32);
            timed.push(d.kind);
        }
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind, &[]);
        pass.dispatch_workgroups(d.x, d.rows.count(&run), 1);
    }
    if let Some(t) = timer {
        pass.write_timestamp(&t.set, timed.len() as u32);
    }
}

/// How a forward pass was recorded, so a later call knows whether it can submit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recorded {
    /// With the workgroup counts of these sizes in the commands.
    Exact(Run),
    /// For any sizes that run the same plan dispatches (`When`) as these, the counts read from
    /// the `grid` buffer at run time (`dispatch_workgroups_indirect`).
    AnySize(Run),
}

impl Recorded {
    /// Whether the pass runs a call of sizes `run` correctly.
    fn serves(&self, run: &Run, plan: &[Dispatch]) -> bool {
        match self {
            Recorded::Exact(r) => r == run,
            Recorded::AnySize(like) => plan.iter().all(|d| d.when.runs(run) == d.when.runs(like)),
        }
    }
}

/// Writes the workgroup counts of `run` for every plan dispatch into `grid` (through `args`),
/// for a pass recorded for any size.
fn write_grid(
    plan: &[Dispatch],
    run: Run,
    args: &mut Vec<u32>,
    (queue, grid): (&wgpu::Queue, &wgpu::Buffer),
) {
    args.clear();
    for d in plan {
        args.extend_from_slice(&[d.x, d.rows.count(&run), 1]);
    }
    queue.write_buffer(grid, 0, bytemuck::cast_slice(args));
}

/// Records the plan dispatches that run for sizes `like` in one compute pass, their workgroup counts
/// read from `grid` (12 bytes per plan dispatch, in plan order) when the pass runs.
fn record_any_size(plan: &[Dispatch], like: Run, enc: &mut wgpu::CommandEncoder, grid: &wgpu::Buffer) {
    let mut pass = enc
        .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
    for (i, d) in plan.iter().enumerate().filter(|(_, d)| d.when.runs(&like)) {
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind, &[]);
        pass.dispatch_workgroups_indirect(grid, 12 * i as u64);
    }
}

/// The two argmax dispatches over (run, logits, parts, ids): slice winners, then each row's.
fn argmax_dispatches(
    b: &mut Builder<'_>,
    (run, logits, parts, ids): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    cols: u32,
    stride: u32,
) -> Result<[Dispatch; 2], GpuError> {
    let p = ArgmaxParams { cols, stride, _pad: [0; 2] };
    let part =
        b.dispatch(Op::ArgmaxPart, None, &p, &[(1, run), (4, logits), (6, parts)], ARGMAX_PARTS, Rows::Outs)?;
    let best = b.dispatch(Op::Argmax, None, &p, &[(1, run), (5, ids), (6, parts)], 1, Rows::Outs)?;
    Ok([part, best])
}

/// Checks that an ids buffer holds one id per row.
fn check_ids(ids: &[TokenId], rows: usize) -> Result<(), GpuError> {
    if ids.len() != rows {
        return Err(GpuError::BadInput(format!("argmax buffer holds {} ids; need {rows}", ids.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{GEMM_MIN_TOKENS, OUT_PROJ_GEMM_MIN, Run, gemm_calls, logits_runs};

    #[test]
    fn a_gemm_runs_once_on_every_call_past_its_threshold() {
        for coop in [false, true] {
            for above in [GEMM_MIN_TOKENS, OUT_PROJ_GEMM_MIN] {
                let calls = gemm_calls(above, coop);
                for n in 1..=300 {
                    let run = Run { n_tok: n, n_seq: n, out_row0: 0, n_out: n };
                    let k = calls.iter().filter(|(w, _)| w.runs(&run)).count();
                    assert_eq!(k, usize::from(n > above), "coop {coop}, above {above}, {n} tokens");
                }
            }
        }
    }

    fn runs(wants: &[bool]) -> Vec<(u32, u32)> {
        let mut r = vec![(9, 9)]; // cleared first
        logits_runs(wants.iter().copied(), &mut r);
        r
    }

    #[test]
    fn logits_rows_copy_as_runs_of_consecutive_rows() {
        assert_eq!(runs(&[]), []);
        assert_eq!(runs(&[false, false]), []);
        assert_eq!(runs(&[true; 4]), [(0, 4)]);
        assert_eq!(runs(&[true, false, true, true, false, false, true]), [(0, 1), (2, 2), (6, 1)]);
    }
}

/// What the kernel tests share: the device (or a skip) and running dispatches to read a buffer.
#[cfg(test)]
mod kernel_harness {
    use super::*;
    use crate::AdapterChoice;

    /// The test device; None (the test skips) when there is none and `CI` is unset.
    pub(super) fn device() -> Option<Gpu> {
        match Gpu::open(AdapterChoice::Any) {
            Ok(g) => Some(g),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping GPU test: {e}");
                None
            }
            Err(e) => panic!("CI is set and no GPU adapter is usable: {e}"),
        }
    }

    /// Runs `ds` for the call sizes `run` in one pass and returns the first `bytes` of `buf`.
    pub(super) fn run_and_read<T: bytemuck::Pod>(
        gpu: &Gpu,
        ds: &[&Dispatch],
        run: &Run,
        buf: &wgpu::Buffer,
        bytes: u64,
    ) -> Vec<T> {
        let dev = &gpu.device;
        let read = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in ds {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind, &[]);
                pass.dispatch_workgroups(d.x, d.rows.count(run), 1);
            }
        }
        enc.copy_buffer_to_buffer(buf, 0, &read, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        read.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
        dev.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
        let got = bytemuck::cast_slice::<u8, T>(&read.slice(..).get_mapped_range().unwrap()).to_vec();
        gpu.errors.check().expect("no validation error");
        got
    }
}

/// `argmax.wgsl` on hand-made rows, against the engine's [`argmax`] (the sampler's greedy rule).
#[cfg(test)]
mod argmax_kernel {
    use super::*;
    use tinystate_engine::sampler::argmax;

    /// Runs the kernel over `rows` (each `cols` long) and returns its ids; None without a
    /// device (and `CI` unset).
    fn gpu_argmax(rows: &[Vec<f32>], cols: usize) -> Option<Vec<u32>> {
        let gpu = kernel_harness::device()?;
        let dev = &gpu.device;
        let mut b = Builder { dev, limit: u64::MAX, pipes: Pipelines::default(), coop: gpu.coop };
        let n = rows.len() as u32;
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let storage = wgpu::BufferUsages::STORAGE;
        let logits = b.init("logits", bytemuck::cast_slice(&flat), storage).unwrap();
        let ids = b.storage("ids", 4 * u64::from(n), wgpu::BufferUsages::COPY_SRC).unwrap();
        let run = Run { n_tok: n, n_seq: n, out_row0: 0, n_out: n };
        let rb = b.init("run", bytemuck::bytes_of(&run), wgpu::BufferUsages::UNIFORM).unwrap();
        let parts = b.storage("parts", 8 * u64::from(n * ARGMAX_PARTS), wgpu::BufferUsages::empty()).unwrap();
        let [part, best] =
            argmax_dispatches(&mut b, (&rb, &logits, &parts, &ids), cols as u32, cols as u32).unwrap();
        Some(kernel_harness::run_and_read(&gpu, &[&part, &best], &run, &ids, 4 * u64::from(n)))
    }

    /// A row of `cols` values below zero, varied, with `set` (index, value) written over it.
    fn row(cols: usize, set: &[(usize, f32)]) -> Vec<f32> {
        let mut r: Vec<f32> = (0..cols).map(|i| -1.0 - (i * 37 % 101) as f32).collect();
        set.iter().for_each(|&(i, v)| r[i] = v);
        r
    }

    fn check(rows: Vec<Vec<f32>>, cols: usize, want: &[u32]) {
        let Some(got) = gpu_argmax(&rows, cols) else { return };
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(argmax(r).0, want[i], "the engine, row {i}");
            assert_eq!(got[i], want[i], "the kernel, row {i}");
        }
    }

    #[test]
    fn ties_nan_and_infinities_as_the_sampler() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        // 200 columns: most threads of a part hold no value.
        let c = 200;
        let rows = vec![
            vec![0.0; c],  // all equal: the lowest id
            vec![-inf; c], // all −∞: 0
            vec![nan; c],  // all NaN: 0
            (0..c).map(|i| if i % 2 == 0 { nan } else { -inf }).collect(),
            row(c, &[(70, 5.0), (3, 5.0)]),   // a tie across parts
            row(c, &[(130, 5.0), (66, 5.0)]), // a tie: the lower index wins
            row(c, &[(199, 5.0), (150, 5.0), (64, 5.0)]),
            row(c, &[(100, inf), (40, inf), (7, 1e30)]),
            row(c, &[(0, nan), (1, nan), (5, -0.5)]), // NaN is not the highest
            row(c, &[(9, -0.0), (12, 0.0)]),          // −0 = +0: the lowest id
            row(c, &[(2, -inf), (150, f32::MAX), (151, f32::MAX)]),
            row(c, &[(199, f32::MIN_POSITIVE)]), // the last column, after every thread's end
            row(c, &[]),
        ];
        let want = [0, 0, 0, 0, 3, 66, 64, 40, 5, 9, 150, 199, 0];
        check(rows, c, &want);
    }

    #[test]
    fn vocab_wide_rows() {
        // 50,000 columns in ARGMAX_PARTS parts: a thread reads several columns of its part, 256
        // apart (thread 5 of part 0: 5, 261, 517, 773, …), four to a pass.
        let c: usize = 50_000;
        let span = c.div_ceil(ARGMAX_PARTS as usize);
        let rows = vec![
            row(c, &[(517, 5.0), (261, 5.0), (773, 5.0)]),
            row(c, &[(773, 5.0), (40_000, 5.0)]),
            row(c, &[(c - 1, 1.0)]),
            row(c, &[(span - 1, 2.0), (span, 2.0)]), // the last of part 0, the first of part 1
        ];
        check(rows, c, &[261, 773, c as u32 - 1, span as u32 - 1]);
    }

    #[test]
    fn rows_shorter_than_the_workgroup() {
        // 10 columns: 54 threads have no value; they must not win, even against −∞.
        let c = 10;
        let rows =
            vec![vec![-f32::INFINITY; c], row(c, &[(9, 2.0)]), row(c, &[(4, -0.0)]), vec![f32::NAN; c]];
        check(rows, c, &[0, 9, 4, 0]);
    }
}

/// `gemm.wgsl` and `gemm_coop.wgsl` with every tile and weight format, against a CPU product
/// over the dequantised weights: rows, columns and tokens with tails, input and output strides
/// wider than the matrix, the residual (`add`) and LM head (`head`, n_out rows) modes.
#[cfg(test)]
mod gemm_kernel {
    use super::*;
    use crate::kernels::{CoopTile, GemmKernel, GemmTile, half_row};
    use half::f16;
    use tinystate_engine::kernels::{dequantize, quantize_q4_0, quantize_q8_0};
    use tinystate_engine::tensor::{BlockQ4_0, BlockQ8_0, Elems, QK};

    /// A deterministic value in about [−1, 1).
    fn val(i: usize, salt: usize) -> f32 {
        let h = (i.wrapping_mul(2654435761) ^ salt.wrapping_mul(40503)) % 2003;
        h as f32 / 1001.5 - 1.0
    }

    #[derive(Clone, Copy, Debug)]
    enum Fmt {
        F32,
        F16,
        Q8,
        Q4,
    }

    /// How far the kernel may be from the f64 product `s` of `cols` terms whose absolute
    /// values sum to `mag`, added to `base`: f32 rounding; with the coop kernel also X and W
    /// rounded to f16 (at most 2⁻¹¹ relative each, so 2⁻¹⁰ per product; F16 weights are exact),
    /// and f16's subnormal steps (2⁻²⁴ absolute, |x|, |w| ≤ 1 here) for values below 2⁻¹⁴.
    fn tolerance(kernel: GemmKernel, cols: usize, mag: f64, base: f64) -> f64 {
        let f32_part = 1e-5 * (mag + base.abs()) + 1e-6;
        match kernel {
            GemmKernel::Fma(_) => f32_part,
            GemmKernel::Coop(_) => f32_part + mag / 1024.0 + 2.0 * cols as f64 / 16_777_216.0,
        }
    }

    /// Runs out (+)= X · Wᵀ with `kernel` and checks every element of `out`, in range or not.
    /// `x_half`: the coop kernel reads X from an f16 copy, as rmsnorm / conv write it.
    fn check(
        gpu: &Gpu,
        kernel: GemmKernel,
        fmt: Fmt,
        (rows, cols): (usize, usize),
        n: u32,
        (add, head, x_half): (bool, bool, bool),
    ) {
        let wf: Vec<f32> = (0..rows * cols).map(|i| val(i, 1)).collect();
        let (q8, q4, h16): (Vec<BlockQ8_0>, Vec<BlockQ4_0>, Vec<f16>);
        let elems = match fmt {
            Fmt::F32 => Elems::F32(&wf),
            Fmt::F16 => {
                h16 = wf.iter().map(|&v| f16::from_f32(v)).collect();
                Elems::F16(&h16)
            }
            Fmt::Q8 => {
                let mut b = vec![bytemuck::Zeroable::zeroed(); wf.len() / QK];
                quantize_q8_0(&wf, &mut b);
                q8 = b;
                Elems::Q8_0(&q8)
            }
            Fmt::Q4 => {
                let mut b = vec![bytemuck::Zeroable::zeroed(); wf.len() / QK];
                quantize_q4_0(&wf, &mut b);
                q4 = b;
                Elems::Q4_0(&q4)
            }
        };
        let mut wd = vec![0.0; rows * cols];
        dequantize(&elems, &mut wd);
        let m = Matrix { rows, cols, elems };

        let dev = &gpu.device;
        let mut b = Builder { dev, limit: u64::MAX, pipes: Pipelines::default(), coop: gpu.coop };
        let w = b.matrix("w", &m).unwrap();
        // Strides wider than the matrix; X's a multiple of 4 where cols is one (the coop
        // kernel's vec4 loads), else not.
        let xs = if cols % 4 == 0 { cols + 4 } else { cols + 3 };
        let os = rows + 2;
        let max_tok = n as usize + 5;
        // Columns past `cols` hold garbage the kernel must not read.
        let x: Vec<f32> = (0..max_tok * xs).map(|i| if i % xs < cols { val(i, 2) } else { 1e30 }).collect();
        let out0: Vec<f32> = (0..max_tok * os).map(|i| val(i, 3) * 100.0).collect();
        let nt = if head { n.div_ceil(2) } else { n };
        let run = Run { n_tok: n, n_seq: n, out_row0: 0, n_out: n.div_ceil(2) };
        let storage = wgpu::BufferUsages::STORAGE;
        let xb = b.init("x", bytemuck::cast_slice(&x), storage).unwrap();
        let ob = b.init("out", bytemuck::cast_slice(&out0), storage | wgpu::BufferUsages::COPY_SRC).unwrap();
        let rb = b.init("run", bytemuck::bytes_of(&run), wgpu::BufferUsages::UNIFORM).unwrap();
        // The f16 copy: rows of half_row(cols) halves, zero-padded, as rmsnorm / conv write it.
        let hs = half_row(cols as u32) as usize;
        let xh: Vec<f16> = (0..max_tok * hs)
            .map(|i| {
                let (t, c) = (i / hs, i % hs);
                if t < max_tok && c < cols { f16::from_f32(x[t * xs + c]) } else { f16::ZERO }
            })
            .collect();
        let xhb = b.init("xh", bytemuck::cast_slice(&xh), storage).unwrap();
        let shape =
            GemmShape::with_kernel(rows as u32, cols as u32, w.groups, xs as u32, (add, head), kernel)
                .half_x(x_half);
        let p = GemmParams { x_stride: xs as u32, o_stride: os as u32, _pad: [0; 2] };
        let bufs = [(1, &rb), (4, &xb), (12, &xhb), (5, &ob)];
        let d = b.gemm_shaped(shape, &w, &p, &bufs).unwrap();
        let got: Vec<f32> = kernel_harness::run_and_read(gpu, &[&d], &run, &ob, 4 * out0.len() as u64);

        for t in 0..max_tok {
            for r in 0..os {
                let o = t * os + r;
                let want = if t < nt as usize && r < rows {
                    let (mut s, mut mag) = (0.0f64, 0.0f64);
                    for c in 0..cols {
                        let v = f64::from(x[t * xs + c]) * f64::from(wd[r * cols + c]);
                        s += v;
                        mag += v.abs();
                    }
                    let base = if add { f64::from(out0[o]) } else { 0.0 };
                    let tol = tolerance(kernel, cols, mag, base);
                    let g = f64::from(got[o]);
                    assert!(
                        (g - (base + s)).abs() <= tol,
                        "{kernel:?} {fmt:?} rows {rows} cols {cols} n {n} add {add} head {head} \
                         x_half {x_half}: \
                         token {t} row {r}: got {g}, want {}",
                        base + s
                    );
                    continue;
                } else {
                    out0[o]
                };
                assert_eq!(got[o], want, "{kernel:?} {fmt:?}: token {t} row {r} written outside the call");
            }
        }
    }

    /// Every format with tails in rows, columns and tokens, through `kernel`, X in f32 or (coop
    /// kernel) in f16.
    fn tails(gpu: &Gpu, kernel: GemmKernel, x_half: bool) {
        // Two row tiles and a tail; quantised formats need whole 32-column blocks.
        let rows = 2 * kernel.bm() as usize + 5;
        check(gpu, kernel, Fmt::F32, (rows, 70), 70, (false, false, x_half)); // 17.5 groups: a partial slice
        check(gpu, kernel, Fmt::F16, (rows, 37), 9, (true, false, x_half));
        check(gpu, kernel, Fmt::F16, (rows, 128), 33, (false, true, x_half));
        check(gpu, kernel, Fmt::Q8, (rows, 96), 130, (true, false, x_half));
        check(gpu, kernel, Fmt::Q4, (rows, 64), 64, (false, true, x_half));
    }

    #[test]
    fn every_tile_and_format_with_tails() {
        let Some(gpu) = kernel_harness::device() else { return };
        for tile in GemmTile::ALL {
            tails(&gpu, GemmKernel::Fma(tile), false);
        }
        // One row, one token.
        check(&gpu, GemmKernel::Fma(GemmTile::ALL[0]), Fmt::F32, (1, 5), 1, (false, false, false));
    }

    /// Tiles besides [`CoopTile::ALL`] that were timed on the H200 (BENCHMARKS.md), kept
    /// correct so that a retune can pick them.
    const SWEPT: [CoopTile; 7] = [
        CoopTile { wm: 4, wn: 2, wk: 1, fm: 2, fn_: 2, ks: 2 },
        CoopTile { wm: 2, wn: 4, wk: 1, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 2, wn: 2, wk: 1, fm: 2, fn_: 2, ks: 2 },
        CoopTile { wm: 2, wn: 1, wk: 2, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 1, wn: 2, wk: 2, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 1, wn: 1, wk: 2, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 1, wn: 1, wk: 8, fm: 1, fn_: 1, ks: 8 },
    ];

    /// The tensor-core kernel, checked the same way, on adapters that have it. Others (lavapipe,
    /// so CI) skip this test: without the capability the models never run that kernel.
    #[test]
    fn coop_every_tile_and_format_with_tails() {
        let Some(gpu) = kernel_harness::device() else { return };
        if !gpu.tensor_cores() {
            eprintln!("skipping the coop GEMM test: {} has no tensor-core GEMM", gpu.describe());
            return;
        }
        for tile in CoopTile::ALL.into_iter().chain(SWEPT) {
            tails(&gpu, GemmKernel::Coop(tile), false);
            tails(&gpu, GemmKernel::Coop(tile), true);
        }
        check(&gpu, GemmKernel::Coop(CoopTile::ALL[0]), Fmt::F32, (1, 5), 1, (false, false, false));
        check(&gpu, GemmKernel::Coop(CoopTile::ALL[0]), Fmt::F16, (1, 64), 1, (false, false, true));
        // Model-sized: out_proj (the residual, 24 slices), x_proj, in_proj and an LM head.
        let coop = |rows, small| GemmKernel::Coop(CoopTile::for_rows(rows, small));
        check(&gpu, coop(768, false), Fmt::F16, (768, 1536), 200, (true, false, false));
        check(&gpu, coop(768, true), Fmt::F16, (768, 1536), 64, (true, false, false));
        check(&gpu, coop(80, false), Fmt::Q8, (80, 1536), 256, (false, false, true));
        check(&gpu, coop(80, false), Fmt::F16, (80, 1536), 256, (false, false, true));
        check(&gpu, coop(3072, false), Fmt::F16, (3072, 768), 256, (false, false, true));
        check(&gpu, coop(3072, true), Fmt::F16, (3072, 768), 64, (false, false, true));
        check(&gpu, coop(3072, false), Fmt::Q8, (3072, 768), 100, (false, false, true));
        check(&gpu, coop(8200, false), Fmt::F16, (8200, 768), 100, (false, true, false));
    }
}

/// `matvec.wgsl` on its own, against a CPU product: both ways of reading X (vec4 rows, and
/// scalars for widths that are not a multiple of 4, which no fixture model has), with and
/// without the RMSNorm prologue, the residual add and the LM head's logits rows.
#[cfg(test)]
mod matvec_kernel {
    use super::*;
    use tinystate_engine::tensor::Elems;

    /// A deterministic value in about [−1, 1).
    fn val(i: usize, salt: usize) -> f32 {
        let h = (i.wrapping_mul(2654435761) ^ salt.wrapping_mul(40503)) % 2003;
        h as f32 / 1001.5 - 1.0
    }

    /// Runs one matvec over `n` tokens and checks every element of `out`, in range or not.
    fn check(
        gpu: &Gpu,
        (rows, cols, xs): (usize, usize, usize),
        n: u32,
        (add, head, norm): (bool, bool, bool),
    ) {
        let wf: Vec<f32> = (0..rows * cols).map(|i| val(i, 1)).collect();
        let m = Matrix { rows, cols, elems: Elems::F32(&wf) };
        let dev = &gpu.device;
        let mut b = Builder { dev, limit: u64::MAX, pipes: Pipelines::default(), coop: gpu.coop };
        let w = b.matrix("w", &m).unwrap();
        let os = rows + 2;
        let max_tok = n as usize + 3;
        // Columns past `cols` hold garbage the kernel must not read.
        let x: Vec<f32> = (0..max_tok * xs).map(|i| if i % xs < cols { val(i, 2) } else { 1e30 }).collect();
        let out0: Vec<f32> = (0..max_tok * os).map(|i| val(i, 3) * 100.0).collect();
        // The norm weights sit at a 4-aligned offset, as `smalls` places every vector.
        let nw: Vec<f32> = (0..cols).map(|c| 0.5 + val(c, 4).abs()).collect();
        let small: Vec<f32> = [vec![9.0; 4], nw.clone(), vec![0.0; 4]].concat();
        let eps = 1e-5f32;
        let (row0, nt) = if head { (1, n.div_ceil(2)) } else { (0, n) };
        let run = Run { n_tok: n, n_seq: n, out_row0: row0, n_out: n.div_ceil(2) };
        let storage = wgpu::BufferUsages::STORAGE;
        let xb = b.init("x", bytemuck::cast_slice(&x), storage).unwrap();
        let ob = b.init("out", bytemuck::cast_slice(&out0), storage | wgpu::BufferUsages::COPY_SRC).unwrap();
        let sb = b.init("smalls", bytemuck::cast_slice(&small), storage).unwrap();
        let rb = b.init("run", bytemuck::bytes_of(&run), wgpu::BufferUsages::UNIFORM).unwrap();
        let p = MvParams {
            x_stride: xs as u32,
            o_stride: os as u32,
            layer: 0,
            aux: [4, eps.to_bits(), 0, 0, 0, 0, 0, 0, 0],
        };
        let rows_of = if head { Rows::OutTiles } else { Rows::TokenTiles };
        // A head of one logits row takes the plan's one-row shape.
        let shape = match head && run.n_out == 1 {
            true => MvShape::one_row_head(rows as u32, cols as u32, w.groups, xs as u32),
            false => MvShape::new(rows as u32, cols as u32, w.groups, xs as u32, (add, head)),
        };
        let (op, bufs): (_, &[_]) = match norm {
            true => (Op::MvNorm, &[(1, &rb), (4, &xb), (5, &ob), (6, &sb)]),
            false => (Op::MvPlain, &[(1, &rb), (4, &xb), (5, &ob)]),
        };
        let d = b.matvec_shaped(op, &w, shape, &p, bufs, rows_of).unwrap();
        let got: Vec<f32> = kernel_harness::run_and_read(gpu, &[&d], &run, &ob, 4 * out0.len() as u64);

        let what = format!("rows {rows} cols {cols} x_stride {xs} n {n} add {add} head {head} norm {norm}");
        for t in 0..max_tok {
            for r in 0..os {
                let o = t * os + r;
                if t >= nt as usize || r >= rows {
                    assert_eq!(got[o], out0[o], "{what}: token {t} row {r} written outside the call");
                    continue;
                }
                let xr = &x[(row0 as usize + t) * xs..][..cols];
                let inv = if norm {
                    let ms = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / cols as f64;
                    1.0 / (ms + f64::from(eps)).sqrt()
                } else {
                    1.0
                };
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for c in 0..cols {
                    let g = if norm { f64::from(nw[c]) } else { 1.0 };
                    let v = f64::from(xr[c]) * g * inv * f64::from(wf[r * cols + c]);
                    s += v;
                    mag += v.abs();
                }
                let base = if add { f64::from(out0[o]) } else { 0.0 };
                let g = f64::from(got[o]);
                assert!(
                    (g - (base + s)).abs() <= 1e-5 * (mag + base.abs()) + 1e-6,
                    "{what}: token {t} row {r}: got {g}, want {}",
                    base + s
                );
            }
        }
    }

    #[test]
    fn vec4_and_scalar_inputs_with_norm_add_and_head() {
        let Some(gpu) = kernel_harness::device() else { return };
        for (shape, n, flags) in [
            ((37, 64, 64), 1, (false, false, false)),   // vec4 X
            ((37, 64, 68), 8, (true, false, true)),     // vec4 X, wider stride, norm, residual
            ((300, 37, 37), 3, (false, false, true)),   // scalar X: 37 columns, norm
            ((21, 40, 42), 5, (true, false, false)),    // scalar X: a stride not a multiple of 4
            ((50, 64, 64), 7, (false, true, true)),     // LM head rows from out_row0 = 1
            ((300, 64, 64), 2, (false, true, true)),    // one logits row: 2 threads to a row
            ((300, 37, 37), 1, (false, true, true)),    // the same, scalar X
            ((9, 2000, 2000), 1, (false, true, true)),  // the same, many groups per thread
            ((9, 2000, 2000), 2, (false, false, true)), // many groups per thread
        ] {
            check(&gpu, shape, n, flags);
        }
    }
}

/// The f16 copies rmsnorm and the conv write for the tensor-core GEMM (`norm_f16.wgsl`,
/// `conv_f16.wgsl`), against the f32 outputs of the same kernels: pack2x16float is core WGSL,
/// so this runs on every adapter, lavapipe too, though only tensor-core devices use the copies.
#[cfg(test)]
mod half_writers {
    use super::*;
    use half::f16;

    /// A deterministic value in about [−1, 1).
    fn val(i: usize, salt: usize) -> f32 {
        let h = (i.wrapping_mul(2654435761) ^ salt.wrapping_mul(40503)) % 2003;
        h as f32 / 1001.5 - 1.0
    }

    /// `words` (rows of `cols.div_ceil(16) · 8` words) hold `want` (rows of `cols`) rounded to
    /// f16, within an ulp, and zeros past `cols`.
    fn check_copy(words: &[u32], want: &[f32], cols: usize, n: usize) {
        let hs = half_row(cols as u32) as usize;
        let halves: Vec<f16> =
            words.iter().flat_map(|w| [*w as u16, (*w >> 16) as u16]).map(f16::from_bits).collect();
        for t in 0..n {
            for c in 0..hs {
                let got = halves[t * hs + c];
                if c >= cols {
                    assert_eq!(got.to_bits(), 0, "token {t} column {c}: padding");
                    continue;
                }
                let w = f16::from_f32(want[t * cols + c]);
                let ulps = (i32::from(got.to_bits() as i16) - i32::from(w.to_bits() as i16)).abs();
                assert!(ulps <= 1, "token {t} column {c}: got {got}, want {w}");
            }
        }
    }

    #[test]
    fn rmsnorm_and_conv_write_f16_copies() {
        let Some(gpu) = kernel_harness::device() else { return };
        let dev = &gpu.device;
        let mut b = Builder { dev, limit: u64::MAX, pipes: Pipelines::default(), coop: gpu.coop };
        let (n, cols, k) = (5u32, 70u32, 4u32);
        let (nu, cu) = (n as usize, cols as usize);
        let storage = wgpu::BufferUsages::STORAGE;
        let read = wgpu::BufferUsages::COPY_SRC;
        let run = Run { n_tok: n, n_seq: n, out_row0: 0, n_out: n };
        let rb = b.init("run", bytemuck::bytes_of(&run), wgpu::BufferUsages::UNIFORM).unwrap();
        // Norm weights at 4, conv taps (cols, k) and bias after them.
        let small: Vec<f32> = (0..4 + cu * (2 + k as usize)).map(|i| val(i, 4)).collect();
        let sb = b.init("smalls", bytemuck::cast_slice(&small), storage).unwrap();
        // X (n, 2·cols), read by the norm as rows of cols with stride 2·cols and by the conv as
        // xz; the f16 copies start as garbage, so the padding must be written.
        let x: Vec<f32> = (0..nu * 2 * cu).map(|i| val(i, 1) * 3.0).collect();
        let xb = b.init("x", bytemuck::cast_slice(&x), storage).unwrap();
        let h_words = half_row(cols) / 2;
        let garbage = vec![0x7bff_7bffu32; nu * h_words as usize];
        let out = |b: &Builder<'_>, what| b.storage(what, 4 * u64::from(n * 2 * cols), read).unwrap();
        let xh = b.init("xh", bytemuck::cast_slice(&garbage), storage | read).unwrap();
        let xn = out(&b, "xn");

        let np = NormParams {
            cols,
            x_stride: 2 * cols,
            w_off: 4,
            eps_bits: 1e-5f32.to_bits(),
            h_words,
            ..Default::default()
        };
        for half in [false, true] {
            let d = b.norm(half, &np, (&rb, &xb, &xn, &xh, &sb), Rows::Tokens).unwrap();
            kernel_harness::run_and_read::<u32>(&gpu, &[&d], &run, &xn, 4);
        }
        let want: Vec<f32> = kernel_harness::run_and_read(&gpu, &[], &run, &xn, 4 * u64::from(n * cols));
        let words: Vec<u32> = kernel_harness::run_and_read(&gpu, &[], &run, &xh, 4 * u64::from(n * h_words));
        check_copy(&words, &want, cu, nu);

        // The conv: token t is slot t's first, its window from the state (n slots, 1 layer).
        let meta: Vec<u32> =
            (0..n).flat_map(|t| [0, t, t, 0]).chain((0..n).flat_map(|t| [t, t, 1, 0])).collect();
        let mb = b.init("meta", bytemuck::cast_slice(&meta), storage).unwrap();
        let state: Vec<f32> = (0..nu * (k as usize - 1) * cu).map(|i| val(i, 5)).collect();
        let stb = b.init("conv state", bytemuck::cast_slice(&state), storage).unwrap();
        let xh = b.init("uh", bytemuck::cast_slice(&garbage), storage | read).unwrap();
        let cp = ConvParams {
            d_inner: cols,
            d_conv: k,
            n_layer: 1,
            layer: 0,
            off_w: 4 + cols,
            off_b: 4 + cols * (1 + k),
            h_words,
            _pad: 0,
        };
        let mut us = Vec::new();
        for (op, half) in [(Op::Conv, false), (Op::ConvHalf, true)] {
            let u = out(&b, "u");
            let bufs = [(1, &rb), (4, &xb), (6, &sb), (7, &stb), (8, &mb), (9, &u), (12, &xh)];
            let bufs = if half { &bufs[..] } else { &bufs[..6] };
            let d = b.dispatch(op, None, &cp, bufs, h_words.div_ceil(WG), Rows::Tokens).unwrap();
            us.push(kernel_harness::run_and_read::<f32>(&gpu, &[&d], &run, &u, 4 * u64::from(n * cols)));
        }
        assert_eq!(us[0], us[1], "u with and without the f16 copy");
        let words: Vec<u32> = kernel_harness::run_and_read(&gpu, &[], &run, &xh, 4 * u64::from(n * h_words));
        check_copy(&words, &us[0], cu, nu);
    }
}

/// How [`Builder::layer_stack`] lays out one kind of layer matrix.
#[cfg(test)]
mod layer_stacks {
    use super::*;
    use tinystate_engine::tensor::Elems;

    /// `layers` F32 matrices of `rows` × 4 (16 bytes a row).
    fn stack_of(gpu: &Gpu, rows: usize, layers: usize) -> (Vec<GpuMatrix>, Option<Stacked>) {
        let b = Builder { dev: &gpu.device, limit: u64::MAX, pipes: Pipelines::default(), coop: gpu.coop };
        let values: Vec<f32> = (0..rows * 4 * layers).map(|i| i as f32).collect();
        let mats: Vec<_> =
            values.chunks_exact(rows * 4).map(|v| Matrix { rows, cols: 4, elems: Elems::F32(v) }).collect();
        let refs: Vec<_> = mats.iter().collect();
        let (each, weights) = b.layer_stack("test", &refs).unwrap();
        // Stacked: the plan's buffers, which the fused step shares; else None.
        let shared = match weights {
            LayerWeights::Shared(s) => Some(s),
            LayerWeights::Packed(_) => None,
        };
        (each, shared)
    }

    #[test]
    fn aligned_layers_are_slices_of_one_buffer_and_others_are_not() {
        let Some(gpu) = kernel_harness::device() else { return };
        let align = u64::from(gpu.device.limits().min_storage_buffer_offset_alignment).max(16);
        let (each, stacked) = stack_of(&gpu, (align / 16) as usize, 3);
        let s = stacked.expect("layers of a whole alignment unit stack");
        assert_eq!(s.data.size(), 3 * align);
        for (l, m) in each.iter().enumerate() {
            assert_eq!((m.data.offset, m.data.size, m.data.buf.size()), (l as u64 * align, align, 3 * align));
        }
        if align > 16 {
            // One row (16 bytes) more: layer 1 would start off the alignment.
            let (each, stacked) = stack_of(&gpu, (align / 16) as usize + 1, 3);
            assert!(stacked.is_none(), "unaligned layers must not stack");
            assert!(each.iter().all(|m| m.data.offset == 0 && m.data.size == m.data.buf.size()));
        }
    }
}
