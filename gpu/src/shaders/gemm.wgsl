// Tiled GEMM for batches and prefill chunks: out (n, rows) = X (n, cols) · Wᵀ, or out += it.
// X is a plain f32 buffer (already normed / convolved by rmsnorm.wgsl / conv.wgsl), W comes from
// `load_w` (a weights_*.wgsl file, dequantised on load).
//
// A workgroup of 8×8 threads owns BM = 32 weight rows × BN = 32 tokens. Per K-slice of BK = 32
// columns it stages W (32 × 32) and X (32 × 32) in workgroup memory; each thread then accumulates
// a 4 rows × 4 tokens register block with 16 FMAs per pair of vec4 reads. Each weight is read
// from memory once per 32 tokens.
struct Params {
    rows: u32,     // output features
    cols: u32,     // input features
    groups: u32,   // ceil(cols / 4): vec4 groups per weight row
    x_stride: u32, // floats per input row
    o_stride: u32, // floats per output row
    add: u32,      // 1: out += X·Wᵀ (residual), 0: out = X·Wᵀ
    head: u32,     // 1: n = run.n_out (LM head on rmsnorm.wgsl's rows), else run.n_tok
    _pad: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> xin: array<f32>;        // (n, x_stride)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (n, o_stride)

const BM: u32 = 32u;
const BN: u32 = 32u;
const BKG: u32 = 8u; // K-slice in vec4 groups (32 columns)

var<workgroup> wt: array<vec4<f32>, 256>; // (BK, BM / 4): wt[k·8 + i][j] = W[r0 + 4i + j, k0 + k]
var<workgroup> xs: array<vec4<f32>, 256>; // (BK, BN / 4): xs[k·8 + i][j] = X[t0 + 4i + j, k0 + k]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r0 = wid.x * BM;
    let t0 = wid.y * BN;
    let nt = select(run.n_tok, run.n_out, p.head != 0u);
    let tr = lid / 8u; // this thread's rows r0 + 4·tr ..
    let tt = lid % 8u; // and tokens t0 + 4·tt ..
    var acc: array<vec4<f32>, 4>; // acc[i][j]: row 4·tr + i, token 4·tt + j
    for (var g0 = 0u; g0 < p.groups; g0 += BKG) {
        // W: 32 rows × 8 groups = 256 vec4, four per thread; consecutive threads read
        // consecutive groups of a row.
        for (var i = 0u; i < 4u; i++) {
            let e = i * 64u + lid;
            let r = e / BKG;
            let g = g0 + e % BKG;
            var v = vec4<f32>(0.0);
            if r0 + r < p.rows && g < p.groups {
                v = load_w(r0 + r, g, p.groups);
            }
            let k = 4u * (e % BKG);
            wt[(k + 0u) * 8u + r / 4u][r % 4u] = v.x;
            wt[(k + 1u) * 8u + r / 4u][r % 4u] = v.y;
            wt[(k + 2u) * 8u + r / 4u][r % 4u] = v.z;
            wt[(k + 3u) * 8u + r / 4u][r % 4u] = v.w;
        }
        // X: 32 tokens × 32 columns, 16 floats per thread, consecutive threads on one row.
        for (var i = 0u; i < 16u; i++) {
            let e = i * 64u + lid;
            let t = e / 32u;
            let k = e % 32u;
            let c = 4u * g0 + k;
            var v = 0.0;
            if t0 + t < nt && c < p.cols {
                v = xin[(t0 + t) * p.x_stride + c];
            }
            xs[k * 8u + t / 4u][t % 4u] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let a = wt[k * 8u + tr];
            let b = xs[k * 8u + tt];
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + 4u * tr + i;
        for (var j = 0u; j < 4u; j++) {
            let t = t0 + 4u * tt + j;
            if r < p.rows && t < nt {
                let o = t * p.o_stride + r;
                if p.add != 0u {
                    out[o] += acc[i][j];
                } else {
                    out[o] = acc[i][j];
                }
            }
        }
    }
}
