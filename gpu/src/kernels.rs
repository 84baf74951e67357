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
    /// out (+)= X · Wᵀ with X as is, for calls of ≤ MM_TOKENS tokens (`mv_plain.wgsl` +
    /// `mv_store.wgsl` + `matvec.wgsl`).
    MvPlain,
    /// out = RMSNorm(X)·w · Wᵀ (`mv_norm.wgsl` + `mv_store.wgsl` + `matvec.wgsl`).
    MvNorm,
    /// MvNorm, then u = SiLU(conv1d(out[:, :d_inner])) from the workgroup's sums, for calls
    /// whose tokens fit one tile (`mv_norm.wgsl` + `mv_conv.wgsl` + `matvec.wgsl`).
    MvNormConv,
    /// u = SiLU(conv1d(X)) (`conv.wgsl` + `conv_f32.wgsl`).
    Conv,
    /// Conv, also writing u in f16 for the tensor-core GEMM (`conv.wgsl` + `conv_f16.wgsl`).
    ConvHalf,
    /// xn = RMSNorm(x)·w, the GEMM path's input (`rmsnorm.wgsl` + `norm_f32.wgsl`).
    RmsNorm,
    /// The same, written in f16 for the tensor-core GEMM (`rmsnorm.wgsl` + `norm_f16.wgsl`).
    RmsNormHalf,
    /// out (+)= X · Wᵀ as a tiled GEMM for batches and prefill chunks (`gemm.wgsl`).
    Gemm,
    /// The same on tensor cores, f16 × f16 → f32 cooperative matrices (`gemm_coop.wgsl`), on
    /// devices with [`crate::Gpu::tensor_cores`].
    GemmCoop,
    /// Δ projection, selective scan, gate and conv window shift, a thread per channel
    /// (`scan_common.wgsl` + `scan.wgsl`).
    Scan,
    /// The same for a call's multi-token lead (sequence 0), a thread per state
    /// (`scan_common.wgsl` + `scan_lead.wgsl`).
    ScanLead,
    /// Each slice's best logit (`argmax_common.wgsl` + `argmax_part.wgsl`).
    ArgmaxPart,
    /// The index of each logits row's highest value, the greedy token, from the slices' best
    /// (`argmax_common.wgsl` + `argmax.wgsl`).
    Argmax,
}

/// Threads per `matvec.wgsl` workgroup.
pub(crate) const MV_THREADS: u32 = 256;
/// Tokens per `matvec.wgsl` workgroup (its `TT`).
pub(crate) const MM_TOKENS: u32 = 8;
/// Tokens per `gemm.wgsl` workgroup (the tile's BN, the same for every matrix): 64 covers a
/// batch of 64 in one tile and keeps W traffic at one read per 64 tokens.
pub(crate) const GEMM_TOKENS: u32 = 64;
/// Calls with more token rows than this take the GEMM path (`gemm.wgsl`), others the matrix ×
/// vector path (`matvec.wgsl`). At most MM_TOKENS: `mv_conv.wgsl` needs every token in one tile.
pub(crate) const GEMM_MIN_TOKENS: u32 = MM_TOKENS;
const _: () = assert!(GEMM_MIN_TOKENS <= MM_TOKENS);
/// Channels per `scan_lead.wgsl` workgroup (its `CPW`).
pub(crate) const LEAD_SCAN_CHANNELS: u32 = 4;
/// Channels (threads) per `scan.wgsl` workgroup.
pub(crate) const SCAN_CHANNELS: u32 = 32;
/// Threads per workgroup in every shader.
pub(crate) const WG: u32 = 64;

const COMMON: &str = include_str!("shaders/common.wgsl");
/// SiLU and softplus, for every kernel source and the fused step.
pub(crate) const ACTIVATIONS: &str = include_str!("shaders/activations.wgsl");
const MATVEC: &str = include_str!("shaders/matvec.wgsl");
const MV_NORM: &str = include_str!("shaders/mv_norm.wgsl");
const MV_STORE: &str = include_str!("shaders/mv_store.wgsl");
const MV_IN1: &str = include_str!("shaders/mv_in1.wgsl");
const MV_IN4: &str = include_str!("shaders/mv_in4.wgsl");
const MV_NW1: &str = include_str!("shaders/mv_nw1.wgsl");
const MV_NW4: &str = include_str!("shaders/mv_nw4.wgsl");
const SCAN_COMMON: &str = include_str!("shaders/scan_common.wgsl");
const ARGMAX_COMMON: &str = include_str!("shaders/argmax_common.wgsl");
/// Slices per logits row in `argmax_part.wgsl` (its `PARTS`, written into the argmax shaders'
/// source). 16 slices of about 3,100 logits at the 50k vocabularies: with 64, 16k workgroups of
/// three loads per thread each ended in a barrier tree (H200, B=256: 28.7 µs against 54.6;
/// 115.1k against 113.9k tok/s; 8 slices: 115.2k, and 0.5 % slower at B=1).
pub(crate) const ARGMAX_PARTS: u32 = 16;
// argmax.wgsl reduces a row's parts in one 64-thread tree.
const _: () = assert!(ARGMAX_PARTS <= 64 && ARGMAX_PARTS.is_power_of_two());

/// Sizes compiled into a pipeline, so the shader's loops over them have constant trip counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Spec {
    /// Nothing compiled in.
    None,
    /// A `matvec.wgsl` matrix.
    Mv(MvShape),
    /// A `gemm.wgsl` or `gemm_coop.wgsl` matrix and tile.
    Gemm(GemmShape),
    /// `scan.wgsl`: d_state and dt_rank.
    Scan { n_state: u32, dt_rank: u32 },
}

impl Spec {
    /// The WGSL constants this spec defines.
    fn header(&self) -> String {
        match *self {
            Spec::None => String::new(),
            Spec::Mv(m) => m.header(),
            Spec::Gemm(g) => g.header(),
            Spec::Scan { n_state, dt_rank } => format!(
                "const NS: u32 = {n_state}u;\nconst DT_RANK: u32 = {dt_rank}u;\n\
                 const DT_GROUPS: u32 = {}u;\n",
                dt_rank.div_ceil(4)
            ),
        }
    }
}

/// The compiled-in shape of one `matvec.wgsl` pipeline (see [`MvShape::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MvShape {
    /// Output features.
    pub rows: u32,
    /// Input features.
    pub cols: u32,
    /// vec4 groups per weight row (ceil(cols / 4)).
    pub groups: u32,
    /// Threads per row (a power of two dividing MV_THREADS).
    pub tpr: u32,
    /// out += X·Wᵀ (the residual) instead of out = X·Wᵀ.
    pub add: bool,
    /// Token rows are the call's logits rows (the LM head), not all its tokens.
    pub head: bool,
    /// X rows (and the norm weights) are read as vec4: cols and the row stride are multiples
    /// of 4 (`mv_in4.wgsl`, `mv_nw4.wgsl`; bindings 10 and 11 instead of 4 and 6).
    pub x4: bool,
}

impl MvShape {
    /// A shape whose threads read about six weight groups each: few enough that all loads are
    /// in flight at once, enough that a wide matrix does not need thousands of workgroups.
    /// The LM head's threads read about 24 each, 8 to a row: with 32 to a row its 50k rows made
    /// 6,000 workgroups of 8 rows (H200, B=1, replayed: 64.7 µs against 79.8; the other matrices
    /// got slower with that shape).
    /// `x_stride`: floats from one X row to the next.
    pub(crate) fn new(rows: u32, cols: u32, groups: u32, x_stride: u32, (add, head): (bool, bool)) -> Self {
        let split = if head { (24, 8) } else { (6, 32) };
        Self::with_split(rows, cols, groups, x_stride, (add, head), split)
    }

    /// The LM head of a call with one logits row: 2 threads to a row with about 96 weight
    /// groups each, so the grid is less than one wave of workgroups (H200, F16, B=1 pipelined:
    /// 2,020 tok/s against 1,940 with the 8 × 24 of [`MvShape::new`]; 4 × 48 gave 1,986; at 8
    /// rows 2 × 96 was 2 % slower, so calls of several rows keep 8 × 24).
    pub(crate) fn one_row_head(rows: u32, cols: u32, groups: u32, x_stride: u32) -> Self {
        Self::with_split(rows, cols, groups, x_stride, (false, true), (96, 2))
    }

    /// A shape whose threads read about `per_thread` weight groups each, at least `min_tpr`
    /// threads to a row.
    fn with_split(
        rows: u32,
        cols: u32,
        groups: u32,
        x_stride: u32,
        (add, head): (bool, bool),
        (per_thread, min_tpr): (u32, u32),
    ) -> Self {
        let tpr = groups.div_ceil(per_thread).next_power_of_two().clamp(min_tpr, MV_THREADS);
        let x4 = cols.is_multiple_of(4) && x_stride.is_multiple_of(4);
        MvShape { rows, cols, groups, tpr, add, head, x4 }
    }

    /// Rows per workgroup.
    pub(crate) fn rows_per_group(&self) -> u32 {
        MV_THREADS / self.tpr
    }

    /// The WGSL constants `matvec.wgsl` expects.
    fn header(&self) -> String {
        let MvShape { rows, cols, groups, tpr, add, head, .. } = *self;
        let gpt = groups.div_ceil(tpr);
        format!(
            "const ROWS: u32 = {rows}u;\nconst COLS: u32 = {cols}u;\nconst GROUPS: u32 = {groups}u;\n\
             const TPR: u32 = {tpr}u;\nconst GPT: u32 = {gpt}u;\nconst ADD: bool = {add};\n\
             const HEAD: bool = {head};\n"
        )
    }
}

/// One `gemm.wgsl` workgroup's tile: BM weight rows × GEMM_TOKENS tokens, a TM rows × 4
/// tokens register block per thread, so (BM / TM) · 16 threads (the shader's warp layout wants
/// BM / TM a multiple of 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GemmTile {
    /// Weight rows per workgroup (a multiple of 32: the shader's swizzle and warp layout).
    pub bm: u32,
    /// Rows per thread (4 or 8).
    pub tm: u32,
}

impl GemmTile {
    /// Tokens per thread.
    const TN: u32 = 4;

    /// The tile for a matrix of `rows` output features: the largest whose row tiles number at
    /// least 64, so that a call of 64 tokens (one token tile) still spreads over ~half of an
    /// H200's 132 SMs and 128+ tokens fill them, else the smallest.
    ///  - 128 × 64, 8×4 per thread, 256 threads: most FMAs per workgroup-memory read (the LM
    ///    head: 393 row tiles at vocab 50280);
    ///  - 64 × 64, 4×4 per thread, 256 threads;
    ///  - 32 × 64, 4×4 per thread, 128 threads: narrow matrices (in_proj 3072 rows: 96 row
    ///    tiles; out_proj 768 rows: 24), where bigger tiles would leave most SMs idle.
    pub(crate) fn for_rows(rows: u32) -> Self {
        let all = Self::ALL;
        all.into_iter().find(|t| rows.div_ceil(t.bm) >= 64).unwrap_or(all[all.len() - 1])
    }

    /// Every tile [`GemmTile::for_rows`] picks from, largest first.
    pub(crate) const ALL: [GemmTile; 3] =
        [GemmTile { bm: 128, tm: 8 }, GemmTile { bm: 64, tm: 4 }, GemmTile { bm: 32, tm: 4 }];
}

/// One `gemm_coop.wgsl` workgroup's tile: WM × WN × WK subgroups of 32 lanes, each a FM × FN
/// block of 16×16 fragments (FM, FN ≤ 2), the WK subgroups splitting K between them; K-slices of
/// 16·KS columns (KS a multiple of WK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CoopTile {
    /// Subgroups along the rows.
    pub wm: u32,
    /// Subgroups along the tokens.
    pub wn: u32,
    /// Subgroups splitting K.
    pub wk: u32,
    /// 16-row fragments per subgroup.
    pub fm: u32,
    /// 16-token fragments per subgroup.
    pub fn_: u32,
    /// 16-column K fragments per slice.
    pub ks: u32,
}

impl CoopTile {
    /// Weight rows per workgroup.
    pub(crate) const fn bm(&self) -> u32 {
        16 * self.wm * self.fm
    }

    /// Tokens per workgroup.
    pub(crate) const fn bn(&self) -> u32 {
        16 * self.wn * self.fn_
    }

    /// Threads per workgroup.
    const fn threads(&self) -> u32 {
        32 * self.wm * self.wn * self.wk
    }

    /// Subgroups per workgroup.
    const fn subgroups(&self) -> u32 {
        self.wm * self.wn * self.wk
    }

    /// Workgroup memory the shader declares: the W and X slices as f16 (rows padded by 8
    /// halves) and one 16×16 f32 scratch per subgroup.
    pub(crate) const fn workgroup_bytes(&self) -> u32 {
        2 * (self.bm() + self.bn()) * (16 * self.ks + 8) + 4 * 256 * self.subgroups()
    }

    /// The tile for a matrix of `rows` output features in calls of more than
    /// [`COOP_SMALL_TOKENS`] token rows (`small`: at most that many), timed on an H200 (µs per
    /// dispatch replayed alone at B=64 / B=256, F16, BENCHMARKS.md):
    ///  - 128 × 64, 4 × 2 subgroups of 2 × 2 fragments: the LM head (393 row tiles; 75 / 260,
    ///    64 × 64: 65 / 231, 64 × 128: 99 / 203);
    ///  - in_proj (3072 rows): 64 × 64, 2 × 2 subgroups of 2 × 2 fragments past
    ///    COOP_SMALL_TOKENS (20 at 256; 32 × 32 split four ways: 25), that 32 × 32 tile up to it
    ///    (11 at 64, 64 × 64: 18);
    ///  - out_proj (768 rows): 32 × 32, one 2 × 2 block, K split four ways in slices of 128
    ///    columns, past it (a whole B=256 step: 95.9k against 92.0k–92.9k tok/s with slices of
    ///    64; K split eight ways: 86.4k, two ways: 86.8k), 16 × 16, K split four ways, up to it
    ///    (14 at 64, 32 × 32: 19);
    ///  - x_proj (80 rows, GEMM only past OUT_PROJ_GEMM_MIN): 16 × 16, K split four ways in
    ///    slices of 128 columns (8 at 256; slices of 64: 11).
    ///
    /// Slices of 64 columns elsewhere: they measured faster than 32 (fewer barriers, more loads
    /// in flight).
    ///
    /// Swept again with the vec4<f16> staging (whole B=256 steps, pipelined, against 109.8k–110.1k
    /// tok/s for these): in_proj on 64 × 64 with K split two ways 99.8k (slices of 128: 107.7k),
    /// slices of 128 unsplit 105.1k; out_proj on 64 × 32 split four ways, slices of 128, 109.4k,
    /// others 98.5k–103.9k; the LM head on 64 × 64 109.4k, split two ways with slices of 128
    /// 108.1k, unsplit 105.7k.
    pub(crate) fn for_rows(rows: u32, small: bool) -> Self {
        match (rows, small) {
            (8192.., _) => Self::ALL[0],
            (2048.., false) => Self::ALL[1],
            (2048.., true) => Self::ALL[2],
            (256.., false) => Self::ALL[3],
            (256.., true) => Self::ALL[4],
            _ => Self::ALL[5],
        }
    }

    /// Every tile [`CoopTile::for_rows`] picks from, largest first.
    pub(crate) const ALL: [CoopTile; 6] = [
        CoopTile { wm: 4, wn: 2, wk: 1, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 2, wn: 2, wk: 1, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 1, wn: 1, wk: 4, fm: 2, fn_: 2, ks: 4 },
        CoopTile { wm: 1, wn: 1, wk: 4, fm: 2, fn_: 2, ks: 8 },
        CoopTile { wm: 1, wn: 1, wk: 4, fm: 1, fn_: 1, ks: 4 },
        CoopTile { wm: 1, wn: 1, wk: 4, fm: 1, fn_: 1, ks: 8 },
    ];

    /// The most workgroup memory any tile needs: a device with less gets no tensor-core GEMM.
    pub(crate) const MAX_WORKGROUP_BYTES: u32 = {
        let (mut i, mut m) = (0, 0);
        while i < Self::ALL.len() {
            let b = Self::ALL[i].workgroup_bytes();
            m = if b > m { b } else { m };
            i += 1;
        }
        m
    };
}

/// Calls of at most this many token rows run the tensor-core GEMMs of in_proj and out_proj on
/// smaller tiles ([`CoopTile::for_rows`]): more workgroups for fewer tokens.
pub(crate) const COOP_SMALL_TOKENS: u32 = 128;

/// Halves per row of a tensor-core GEMM's f16 input of `cols` columns: whole 16-column
/// fragments (so whole groups of 4), zero-padded.
pub(crate) const fn half_row(cols: u32) -> u32 {
    cols.div_ceil(16) * 16
}

// Every tile's staging loads divide evenly between its threads, and its K-subgroups share each
// slice's fragments evenly.
const _: () = {
    let mut i = 0;
    while i < CoopTile::ALL.len() {
        let t = CoopTile::ALL[i];
        let per_slice = 4 * t.ks; // vec4 groups per staged row
        assert!((t.bm() * per_slice).is_multiple_of(t.threads()) && t.bm() * per_slice >= t.threads());
        assert!((t.bn() * per_slice).is_multiple_of(t.threads()) && t.bn() * per_slice >= t.threads());
        assert!(t.ks.is_multiple_of(t.wk) && t.fm <= 2 && t.fn_ <= 2);
        i += 1;
    }
};

/// Which GEMM kernel a [`GemmShape`] compiles, with its tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GemmKernel {
    /// `gemm.wgsl`, f32 FMAs.
    Fma(GemmTile),
    /// `gemm_coop.wgsl`, cooperative matrices.
    Coop(CoopTile),
}

impl GemmKernel {
    /// The kernel for a matrix of `rows` output features: tensor cores when `coop`, on the tile
    /// for calls of at most [`COOP_SMALL_TOKENS`] tokens when `small`.
    pub(crate) fn for_rows(rows: u32, coop: bool, small: bool) -> Self {
        if coop {
            GemmKernel::Coop(CoopTile::for_rows(rows, small))
        } else {
            GemmKernel::Fma(GemmTile::for_rows(rows))
        }
    }

    /// The op whose shader it is.
    pub(crate) fn op(&self) -> Op {
        match self {
            GemmKernel::Fma(_) => Op::Gemm,
            GemmKernel::Coop(_) => Op::GemmCoop,
        }
    }

    /// Weight rows per workgroup.
    pub(crate) fn bm(&self) -> u32 {
        match self {
            GemmKernel::Fma(t) => t.bm,
            GemmKernel::Coop(t) => t.bm(),
        }
    }

    /// Tokens per workgroup.
    pub(crate) fn bn(&self) -> u32 {
        match self {
            GemmKernel::Fma(_) => GEMM_TOKENS,
            GemmKernel::Coop(t) => t.bn(),
        }
    }

    /// The tile's WGSL constants.
    fn header(&self) -> String {
        match *self {
            GemmKernel::Fma(GemmTile { bm, tm }) => format!(
                "const BM: u32 = {bm}u;\nconst BN: u32 = {}u;\nconst TM: u32 = {tm}u;\nconst TN: u32 = {}u;\n",
                GEMM_TOKENS,
                GemmTile::TN
            ),
            GemmKernel::Coop(CoopTile { wm, wn, wk, fm, fn_, ks }) => format!(
                "const WM: u32 = {wm}u;\nconst WN: u32 = {wn}u;\nconst WK: u32 = {wk}u;\n\
                 const FM: u32 = {fm}u;\nconst FN: u32 = {fn_}u;\nconst KS: u32 = {ks}u;\n"
            ),
        }
    }
}

/// The compiled-in shape of one GEMM pipeline: the matrix, the mode and the kernel's tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GemmShape {
    /// Output features.
    pub rows: u32,
    /// Input features.
    pub cols: u32,
    /// vec4 groups per weight row (ceil(cols / 4)).
    pub groups: u32,
    /// out += X·Wᵀ (the residual) instead of out = X·Wᵀ.
    pub add: bool,
    /// Token rows are the call's logits rows (the LM head), not all its tokens.
    pub head: bool,
    /// The kernel and its workgroup tile.
    pub tile: GemmKernel,
    /// The coop kernel reads X as vec4 (`mv_in4.wgsl`, binding 10 instead of 4): cols and the
    /// row stride are multiples of 4.
    pub x4: bool,
    /// The coop kernel reads X from its f16 copy (`coop_x_half.wgsl`, binding 12 instead of 4:
    /// rows of [`half_row`] halves) instead of converting f32 X.
    pub xh: bool,
}

impl GemmShape {
    /// The shape with the given kernel and tile. `x_stride`: floats from one X row to the next.
    pub(crate) fn with_kernel(
        rows: u32,
        cols: u32,
        groups: u32,
        x_stride: u32,
        (add, head): (bool, bool),
        tile: GemmKernel,
    ) -> Self {
        let vec4 = cols.is_multiple_of(4) && x_stride.is_multiple_of(4);
        let x4 = vec4 && matches!(tile, GemmKernel::Coop(_));
        GemmShape { rows, cols, groups, add, head, tile, x4, xh: false }
    }

    /// On the coop kernel, reads X from its f16 copy when `x_half` (the producer writes one).
    pub(crate) fn half_x(self, x_half: bool) -> Self {
        let xh = x_half && matches!(self.tile, GemmKernel::Coop(_));
        GemmShape { xh, x4: self.x4 && !xh, ..self }
    }

    /// Workgroups along the rows (the grid's first dimension).
    pub(crate) fn row_tiles(&self) -> u32 {
        self.rows.div_ceil(self.tile.bm())
    }

    /// The WGSL constants `gemm.wgsl` / `gemm_coop.wgsl` expect.
    fn header(&self) -> String {
        let GemmShape { rows, cols, groups, add, head, tile, .. } = *self;
        format!(
            "const ROWS: u32 = {rows}u;\nconst COLS: u32 = {cols}u;\nconst GROUPS: u32 = {groups}u;\n\
             const ADD: bool = {add};\nconst HEAD: bool = {head};\nconst XG: u32 = {}u;\n{}",
            half_row(cols) / 4,
            tile.header()
        )
    }
}

/// `gemm_coop.wgsl` with the files that bring X: its f16 copy (see [`GemmShape::xh`]), or f32
/// rows read by `input`.
fn coop_parts(spec: Spec, input: &'static str) -> [&'static str; 4] {
    let x = if matches!(spec, Spec::Gemm(GemmShape { xh: true, .. })) {
        ["", include_str!("shaders/coop_x_half.wgsl")]
    } else {
        [input, include_str!("shaders/coop_x_staged.wgsl")]
    };
    [x[0], x[1], include_str!("shaders/coop_x.wgsl"), include_str!("shaders/gemm_coop.wgsl")]
}

fn source(op: Op, f: Format, spec: Spec) -> String {
    let x4 = matches!(spec, Spec::Mv(MvShape { x4: true, .. }) | Spec::Gemm(GemmShape { x4: true, .. }));
    let (input, nw) = if x4 { (MV_IN4, MV_NW4) } else { (MV_IN1, MV_NW1) };
    // mv_conv.wgsl reads smalls as scalars: mv_nw1 declares them, with mv_nw4 mv_smalls does.
    let conv_smalls = if x4 { include_str!("shaders/mv_smalls.wgsl") } else { "" };
    let parts: &[&str] = match op {
        Op::Embed => &[include_str!("shaders/embed.wgsl")],
        Op::MvPlain => &[input, include_str!("shaders/mv_plain.wgsl"), MV_STORE, MATVEC],
        Op::MvNorm => &[input, nw, MV_NORM, MV_STORE, MATVEC],
        Op::MvNormConv => &[input, nw, conv_smalls, MV_NORM, include_str!("shaders/mv_conv.wgsl"), MATVEC],
        Op::Conv => &[include_str!("shaders/conv.wgsl"), include_str!("shaders/conv_f32.wgsl")],
        Op::ConvHalf => &[include_str!("shaders/conv.wgsl"), include_str!("shaders/conv_f16.wgsl")],
        Op::RmsNorm => &[include_str!("shaders/rmsnorm.wgsl"), include_str!("shaders/norm_f32.wgsl")],
        Op::RmsNormHalf => &[include_str!("shaders/rmsnorm.wgsl"), include_str!("shaders/norm_f16.wgsl")],
        Op::Gemm => &[include_str!("shaders/gemm.wgsl")],
        Op::GemmCoop => &coop_parts(spec, input),
        Op::Scan => &[SCAN_COMMON, include_str!("shaders/scan.wgsl")],
        Op::ScanLead => &[SCAN_COMMON, include_str!("shaders/scan_lead.wgsl")],
        Op::ArgmaxPart => &[ARGMAX_COMMON, include_str!("shaders/argmax_part.wgsl")],
        Op::Argmax => &[ARGMAX_COMMON, include_str!("shaders/argmax.wgsl")],
    };
    // WGSL wants enable directives before every declaration.
    let enables = if op == Op::GemmCoop { "enable f16;\nenable wgpu_cooperative_matrix;\n" } else { "" };
    let mut s = String::from(enables);
    s.push_str(COMMON);
    s.push_str(ACTIVATIONS);
    s.push_str(f.shader());
    s.push_str(&spec.header());
    if matches!(op, Op::ArgmaxPart | Op::Argmax) {
        s.push_str(&format!("const PARTS: u32 = {ARGMAX_PARTS}u;\n"));
    }
    parts.iter().for_each(|p| s.push_str(p));
    s
}

/// Compiled pipelines, built on first use.
#[derive(Default)]
pub(crate) struct Pipelines {
    map: HashMap<(Op, Format, Spec), wgpu::ComputePipeline>,
}

impl Pipelines {
    /// The pipeline for `op` over weights in format `f` with the sizes `spec` compiled in; a
    /// shader the device rejects is an error.
    pub(crate) fn get(
        &mut self,
        dev: &wgpu::Device,
        op: Op,
        f: Format,
        spec: Spec,
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        if let Some(p) = self.map.get(&(op, f, spec)) {
            return Ok(p.clone());
        }
        let label = match spec {
            Spec::Mv(s) => format!("{op:?}/{f:?}/{}x{}", s.rows, s.cols),
            Spec::Gemm(s) => {
                format!("{op:?}/{f:?}/{}x{}/tile{}x{}", s.rows, s.cols, s.tile.bm(), s.tile.bn())
            }
            _ => format!("{op:?}/{f:?}"),
        };
        let pipe = compile(dev, &label, &source(op, f, spec))
            .map_err(|e| GpuError::Unsupported { what: format!("pipeline {label}: {e}") })?;
        self.map.insert((op, f, spec), pipe.clone());
        Ok(pipe)
    }
}

/// Compiles WGSL `src` (entry point `main`) into a compute pipeline; the device's validation
/// error, if any, as text.
pub(crate) fn compile(dev: &wgpu::Device, label: &str, src: &str) -> Result<wgpu::ComputePipeline, String> {
    let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
    let desc =
        wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(src.into()) };
    // Bounds checks stay on. Loop bounding (a counter wgpu adds to every loop so that an
    // untrusted shader cannot hang the GPU) is off: it keeps the driver from unrolling our
    // constant-count loops and cost 40% of a decode step on an H200 (1.25 vs 2.03 ms).
    let checks =
        wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };
    // SAFETY: `force_loop_bounding: false` requires that no shader loops forever. Every loop in
    // shaders/ runs to a compiled-in constant, a uniform size the host checked (call sizes,
    // matrix shapes), or a halving counter (`h >>= 1`); the one that waits on other threads,
    // fused_step.wgsl's barrier poll, gives up after a compiled-in number of polls.
    let module = unsafe { dev.create_shader_module_trusted(desc, checks) };
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
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
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(e.to_string()),
        None => Ok(pipe),
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

/// `matvec.wgsl` Params (the meaning of `aux` depends on the prologue and epilogue).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MvParams {
    pub x_stride: u32,
    pub o_stride: u32,
    pub layer: u32,
    pub aux: [u32; 9],
}

/// `gemm.wgsl` Params: the strides (the sizes are compiled in, see [`GemmShape`]).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GemmParams {
    pub x_stride: u32,
    pub o_stride: u32,
    pub _pad: [u32; 2],
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
    pub h_words: u32,
    pub _pad: [u32; 2],
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
    pub h_words: u32,
    pub _pad: u32,
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
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Run {
    pub n_tok: u32,
    pub n_seq: u32,
    pub out_row0: u32,
    pub n_out: u32,
}

/// Every shader variant through naga's WGSL front end, validator and SPIR-V back end, on any
/// machine: the tensor-core GEMM and the f16 writers run only on devices that have tensor
/// cores, which CI's lavapipe has not.
#[cfg(test)]
mod shader_check {
    use super::*;

    fn validate(what: &str, src: &str) {
        let module =
            naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
        naga::back::spv::write_vec(&module, &info, &Default::default(), None)
            .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    }

    #[test]
    fn coop_gemm_variants_validate() {
        for tile in CoopTile::ALL {
            for f in [Format::F32, Format::F16, Format::Q8_0, Format::Q4_0] {
                for (cols, xs) in [(768, 768), (70, 72), (37, 37)] {
                    for x_half in [false, true] {
                        let shape = GemmShape::with_kernel(
                            200,
                            cols,
                            cols.div_ceil(4),
                            xs,
                            (true, false),
                            GemmKernel::Coop(tile),
                        )
                        .half_x(x_half);
                        validate(
                            &format!("{tile:?} {f:?} {cols} {x_half}"),
                            &source(Op::GemmCoop, f, Spec::Gemm(shape)),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f16_writers_validate() {
        for op in [Op::RmsNorm, Op::RmsNormHalf, Op::Conv, Op::ConvHalf] {
            validate(&format!("{op:?}"), &source(op, Format::F32, Spec::None));
        }
    }
}
