// Tensor-core GEMM (cooperative matrices, 16×16×16, f16 × f16 → f32): the same product as
// gemm.wgsl, out (n, ROWS) = X (n, COLS) · Wᵀ, or out += it with ADD, over the call's logits rows
// with HEAD. Taken only on devices that list that configuration (device.rs); the module starts
// with `enable f16; enable wgpu_cooperative_matrix;` (kernels.rs puts it before everything).
//
// The header (kernels.rs `CoopTile`) compiles in the matrix (ROWS, COLS, GROUPS, ADD, HEAD) and
// the tile: WM × WN × WK subgroups of 32 lanes; subgroup (wm, wn, kw) owns a FM × FN block of
// 16×16 fragments, so the workgroup covers BM = 16·WM·FM weight rows × BN = 16·WN·FN tokens,
// and its WK subgroups split every K-slice between them (kw takes fragments kw, kw + WK, ...;
// their partial sums meet in the epilogue). Splitting K inside the workgroup lets narrow
// matrices (out_proj, x_proj) use small tiles, and so many workgroups, without atomics or a
// second pass.
//
// As C = A·B: A = the W tile (rows × k, row-major in workgroup memory), B = Xᵀ (k × tokens: X's
// rows are B's columns, so column-major), C = outᵀ (rows × tokens, column-major = out's layout).
// Per K-slice of BK = 16·KS columns the workgroup converts W (dequantised by `load_w`) and X to
// f16 in workgroup memory; the next slice's global loads are issued into registers before this
// slice's multiplies, as in gemm.wgsl. X goes through f16: |x| must stay below 65504, and each
// product carries about 2⁻¹⁰ relative error (model.rs `gemm_kernel` states the tolerance).

const BM: u32 = 16u * WM * FM; // weight rows per workgroup
const BN: u32 = 16u * WN * FN; // tokens per workgroup
const BK: u32 = 16u * KS; // K-slice in columns
const BKG: u32 = BK / 4u; // K-slice in vec4 groups
const LDK: u32 = BK + 8u; // halves per staged row: 16 B of padding keeps fragment loads conflict-free
const THREADS: u32 = 32u * WM * WN * WK;
const SLICES: u32 = (GROUPS + BKG - 1u) / BKG;
const NW: u32 = BM * BKG / THREADS; // W vec4 loads per thread per slice
const NX: u32 = BN * BKG / THREADS; // X vec4 loads per thread per slice
const KPW: u32 = KS / WK; // K fragments per subgroup per slice
const TILE: u32 = BM * BN;

struct Params {
    x_stride: u32, // floats per input row
    o_stride: u32, // floats per output row
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
// X (n, x_stride) comes from mv_in1.wgsl (scalars) or mv_in4.wgsl (vec4 loads, COLS and the
// stride multiples of 4), through their `load_x`.
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (n, o_stride)

var<workgroup> wt: array<f16, BM * LDK>; // W slice (BM, LDK): rows × k
var<workgroup> xt: array<f16, BN * LDK>; // X slice (BN, LDK): tokens × k
// The partial sums of each K-subgroup, (WK, BN, BM): kw's tile is column-major outᵀ. Its first
// 256 floats are zeros at the start, the accumulators' initial value.
var<workgroup> cs: array<f32, WK * TILE>;

// The i-th W vec4 this thread loads for the slice at group g0: consecutive threads read
// consecutive groups of one row. Rows past ROWS and groups past GROUPS read as 0.
fn w_part(i: u32, lid: u32, r0: u32, g0: u32) -> vec4<f32> {
    let e = i * THREADS + lid;
    let row = r0 + e / BKG;
    let g = g0 + e % BKG;
    var v = vec4<f32>(0.0);
    if row < ROWS && g < GROUPS {
        v = load_w(row, g, GROUPS);
    }
    return v;
}

// The i-th X vec4 (4 columns of one token) this thread loads for the slice at group g0. Tokens
// past the call's and columns past COLS read as 0, so a tail needs no other care.
fn x_part(i: u32, lid: u32, t0: u32, g0: u32, nt: u32) -> vec4<f32> {
    let e = i * THREADS + lid;
    let tok = t0 + e / BKG;
    let g = g0 + e % BKG;
    var v = vec4<f32>(0.0);
    if tok < nt && g < GROUPS {
        v = load_x(tok, g);
    }
    return v;
}

// Stores the i-th vec4 of a slice (as loaded by w_part / x_part) into a staged tile as f16.
fn stage_w(i: u32, lid: u32, v: vec4<f32>) {
    let e = i * THREADS + lid;
    let o = (e / BKG) * LDK + 4u * (e % BKG);
    let h = vec4<f16>(v);
    for (var j = 0u; j < 4u; j++) {
        wt[o + j] = h[j];
    }
}

fn stage_x(i: u32, lid: u32, v: vec4<f32>) {
    let e = i * THREADS + lid;
    let o = (e / BKG) * LDK + 4u * (e % BKG);
    let h = vec4<f16>(v);
    for (var j = 0u; j < 4u; j++) {
        xt[o + j] = h[j];
    }
}

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let r0 = wid.x * BM;
    let t0 = wid.y * BN;
    let nt = select(run.n_tok, run.n_out, HEAD);
    // This subgroup's fragments: rows 16·(wm·FM + i), tokens 16·(wn·FN + j), K fragments kw + WK·f.
    let wm = sg % WM;
    let wn = (sg / WM) % WN;
    let kw = sg / (WM * WN);
    let a0 = wm * FM * 16u * LDK; // first staged W row of the subgroup
    let b0 = wn * FN * 16u * LDK; // first staged X row (token)

    for (var i = lid; i < 256u; i += THREADS) {
        cs[i] = 0.0;
    }
    var wr: array<vec4<f32>, NW>; // the next slice of W, in registers
    var xr: array<vec4<f32>, NX>; // and of X
    for (var i = 0u; i < NW; i++) {
        wr[i] = w_part(i, lid, r0, 0u);
    }
    for (var i = 0u; i < NX; i++) {
        xr[i] = x_part(i, lid, t0, 0u, nt);
    }
    workgroupBarrier();
    // Up to 2 × 2 accumulators; FM = 1 or FN = 1 leaves some unused (constant conditions).
    var c00 = coopLoad<coop_mat16x16<f32, C>>(&cs[0], 16u);
    var c01 = c00;
    var c10 = c00;
    var c11 = c00;

    for (var s = 0u; s < SLICES; s++) {
        for (var i = 0u; i < NW; i++) {
            stage_w(i, lid, wr[i]);
        }
        for (var i = 0u; i < NX; i++) {
            stage_x(i, lid, xr[i]);
        }
        workgroupBarrier();
        // Slice s + 1 into registers: its loads are in flight during slice s's multiplies.
        if s + 1u < SLICES {
            for (var i = 0u; i < NW; i++) {
                wr[i] = w_part(i, lid, r0, (s + 1u) * BKG);
            }
            for (var i = 0u; i < NX; i++) {
                xr[i] = x_part(i, lid, t0, (s + 1u) * BKG, nt);
            }
        }
        for (var f = 0u; f < KPW; f++) {
            let k = 16u * (kw + WK * f);
            let a0f = coopLoadT<coop_mat16x16<f16, A>>(&wt[a0 + k], LDK);
            let b0f = coopLoad<coop_mat16x16<f16, B>>(&xt[b0 + k], LDK);
            c00 = coopMultiplyAdd(a0f, b0f, c00);
            if FN > 1u {
                let b1f = coopLoad<coop_mat16x16<f16, B>>(&xt[b0 + 16u * LDK + k], LDK);
                c01 = coopMultiplyAdd(a0f, b1f, c01);
                if FM > 1u {
                    let a1f = coopLoadT<coop_mat16x16<f16, A>>(&wt[a0 + 16u * LDK + k], LDK);
                    c10 = coopMultiplyAdd(a1f, b0f, c10);
                    c11 = coopMultiplyAdd(a1f, b1f, c11);
                }
            } else if FM > 1u {
                let a1f = coopLoadT<coop_mat16x16<f16, A>>(&wt[a0 + 16u * LDK + k], LDK);
                c10 = coopMultiplyAdd(a1f, b0f, c10);
            }
        }
        workgroupBarrier();
    }

    // Epilogue: every subgroup's fragments into cs (column-major, stride BM), then each thread
    // sums the K-subgroups' partials of some outputs and writes them; consecutive threads take
    // consecutive rows of one token, so the global writes are contiguous.
    let c0 = kw * TILE + wn * FN * 16u * BM + wm * FM * 16u;
    coopStore(c00, &cs[c0], BM);
    if FN > 1u {
        coopStore(c01, &cs[c0 + 16u * BM], BM);
    }
    if FM > 1u {
        coopStore(c10, &cs[c0 + 16u], BM);
        if FN > 1u {
            coopStore(c11, &cs[c0 + 16u * BM + 16u], BM);
        }
    }
    workgroupBarrier();
    for (var e = lid; e < TILE; e += THREADS) {
        let tok = t0 + e / BM;
        let row = r0 + e % BM;
        if tok < nt && row < ROWS {
            var v = 0.0;
            for (var q = 0u; q < WK; q++) {
                v += cs[q * TILE + e];
            }
            let o = tok * p.o_stride + row;
            if ADD {
                out[o] += v;
            } else {
                out[o] = v;
            }
        }
    }
}
