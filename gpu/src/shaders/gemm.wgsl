// Tiled GEMM for batches and prefill chunks: out (n, ROWS) = X (n, COLS) · Wᵀ, or out += it.
// X is a plain f32 buffer (already normed / convolved by rmsnorm.wgsl / conv.wgsl), W comes from
// `load_w` (a weights_*.wgsl file, dequantised once, on its way into workgroup memory).
//
// The header (kernels.rs `GemmShape`) compiles in the matrix (ROWS, COLS, GROUPS, ADD, HEAD) and
// the tile: a workgroup owns BM weight rows × BN tokens, each of its (BM/TM)·(BN/TN) threads a
// TM rows × TN tokens register block. Per K-slice of BK = 16 columns the workgroup stages
// W (BM × 16) and X (BN × 16) in workgroup memory, k-major so that a thread's operands for one k
// are whole vec4s: TM/4 + TN/4 vec4 reads feed TM·TN FMAs (8×4: 3 reads for 32 FMAs, so the
// FMA pipe, not workgroup memory, is the limit). Constant loop bounds (slices, k, register
// block) let the driver unroll everything but the slice loop.
//
// Why BK = 16: W + X for the 128 × 64 tile is 12 KiB, inside WebGPU's default 16 KiB of
// workgroup memory, and a slice still has 16 k steps of FMAs per two barriers. The next slice's
// global loads are issued into registers before this slice's FMAs, so their latency hides
// behind the arithmetic without a second workgroup buffer.

const BKG: u32 = 4u; // K-slice in vec4 groups
const BK: u32 = 16u; // K-slice in columns
const TR: u32 = BM / TM; // threads along rows
const TC: u32 = BN / TN; // threads along tokens
const THREADS: u32 = TR * TC;
const SLICES: u32 = (GROUPS + BKG - 1u) / BKG;
const NW: u32 = BM * BKG / THREADS; // W vec4 loads per thread per slice
const NX: u32 = BN * BKG / THREADS; // X vec4 loads (4 floats each) per thread per slice
const BM4: u32 = BM / 4u;
const BN4: u32 = BN / 4u;
const MI: u32 = TM / 4u; // row vec4s per thread
const NJ: u32 = TN / 4u; // token vec4s per thread

struct Params {
    x_stride: u32, // floats per input row
    o_stride: u32, // floats per output row
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> xin: array<f32>;        // (n, x_stride)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (n, o_stride)

// Workgroup memory, k-major: wt[k][v] = W rows 4v'..4v'+4 at column k0 + k and
// xs[k][u] = X tokens 4u'..4u'+4 at column k0 + k, where v' = v ^ sw(k), u' = u ^ sw(k) and
// sw(k) = 2·(k / 4) (0, 2, 4, 6). The swizzle spreads the transposing scalar stores over all
// 32 banks: a warp stores 4 groups (k / 4) × 8 rows (two vec4 slots); without it the 4 groups
// land on the same banks (BM and BN are multiples of 32 floats), a 4-way conflict. The reads
// stay whole, aligned vec4s: the XOR only permutes slots inside an aligned block of 8 (BM / 4
// and BN / 4 are multiples of 8). Two-dimensional arrays so that the k index, constant after
// unrolling, folds into the address instead of going through the index clamp.
var<workgroup> wt: array<array<vec4<f32>, BM4>, BK>;
var<workgroup> xs: array<array<vec4<f32>, BN4>, BK>;

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

// The i-th X vec4 (4 columns of one token) this thread loads for the slice at group g0:
// consecutive threads read consecutive columns of one token. Tokens past the call's and
// columns past COLS read as 0, so a tail needs no other care.
fn x_part(i: u32, lid: u32, t0: u32, g0: u32, nt: u32) -> vec4<f32> {
    let e = i * THREADS + lid;
    let tok = t0 + e / BKG;
    let c = 4u * (g0 + e % BKG);
    var v = vec4<f32>(0.0);
    if tok < nt {
        let o = tok * p.x_stride + c;
        for (var j = 0u; j < 4u; j++) {
            if c + j < COLS {
                v[j] = xin[o + j];
            }
        }
    }
    return v;
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r0 = wid.x * BM;
    let t0 = wid.y * BN;
    let nt = select(run.n_tok, run.n_out, HEAD);
    // A warp (32 threads) covers 4 row vec4s × 8 token vec4s of the block grid: per k it reads
    // 4 distinct W vec4s (64 B) and 8 distinct X vec4s (128 B), one conflict-free pass each,
    // and its stores cover 64 contiguous bytes of each output row.
    let lane = lid % 32u;
    let warp = lid / 32u;
    let tm = (warp % (TR / 4u)) * 4u + lane % 4u; // rows 4·(tm + i·TR) .. + 4, i < MI
    let tn = (warp / (TR / 4u)) * 8u + lane / 4u; // tokens 4·(tn + j·TC) .. + 4, j < NJ

    // acc[(j·4 + c)·MI + i]: rows 4·(tm + i·TR) .. + 4 of token 4·(tn + j·TC) + c.
    var acc: array<vec4<f32>, TM * TN / 4u>;
    var wr: array<vec4<f32>, NW>; // the next slice of W, in registers
    var xr: array<vec4<f32>, NX>; // and of X

    for (var i = 0u; i < NW; i++) {
        wr[i] = w_part(i, lid, r0, 0u);
    }
    for (var i = 0u; i < NX; i++) {
        xr[i] = x_part(i, lid, t0, 0u, nt);
    }
    for (var s = 0u; s < SLICES; s++) {
        // Registers (slice s) → workgroup memory, transposed to k-major.
        for (var i = 0u; i < NW; i++) {
            let e = i * THREADS + lid;
            let q = e % BKG;
            let r = e / BKG;
            let v = (r / 4u) ^ (2u * q);
            for (var j = 0u; j < 4u; j++) {
                wt[4u * q + j][v][r % 4u] = wr[i][j];
            }
        }
        for (var i = 0u; i < NX; i++) {
            let e = i * THREADS + lid;
            let q = e % BKG;
            let t = e / BKG;
            let u = (t / 4u) ^ (2u * q);
            for (var j = 0u; j < 4u; j++) {
                xs[4u * q + j][u][t % 4u] = xr[i][j];
            }
        }
        workgroupBarrier();
        // Slice s + 1 into registers: its loads are in flight during slice s's FMAs.
        if s + 1u < SLICES {
            for (var i = 0u; i < NW; i++) {
                wr[i] = w_part(i, lid, r0, (s + 1u) * BKG);
            }
            for (var i = 0u; i < NX; i++) {
                xr[i] = x_part(i, lid, t0, (s + 1u) * BKG, nt);
            }
        }
        for (var kq = 0u; kq < BKG; kq++) {
            let sw = 2u * kq;
            for (var kk = 0u; kk < 4u; kk++) {
                let k = 4u * kq + kk;
                var a: array<vec4<f32>, MI>;
                for (var i = 0u; i < MI; i++) {
                    a[i] = wt[k][(tm + i * TR) ^ sw];
                }
                for (var j = 0u; j < NJ; j++) {
                    let b = xs[k][(tn + j * TC) ^ sw];
                    for (var c = 0u; c < 4u; c++) {
                        for (var i = 0u; i < MI; i++) {
                            acc[(j * 4u + c) * MI + i] += a[i] * b[c];
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var j = 0u; j < NJ; j++) {
        for (var c = 0u; c < 4u; c++) {
            let tok = t0 + 4u * (tn + j * TC) + c;
            if tok < nt {
                for (var i = 0u; i < MI; i++) {
                    let row = r0 + 4u * (tm + i * TR);
                    let v = acc[(j * 4u + c) * MI + i];
                    for (var a = 0u; a < 4u; a++) {
                        if row + a < ROWS {
                            let o = tok * p.o_stride + row + a;
                            if ADD {
                                out[o] += v[a];
                            } else {
                                out[o] = v[a];
                            }
                        }
                    }
                }
            }
        }
    }
}
