// xn (n, cols) = RMSNorm(x[row0 + t]) · w = x / sqrt(mean(x²) + eps) · w (Zhang & Sennrich 2019),
// the GEMM path's input for in_proj and the LM head. One workgroup of NWG threads per token; tree
// reduction. NWG = 256, not 64: a thread's loads are a loop whose trip count the compiler does not
// know, so they go one round trip at a time, and at d_model 768 that was 12 of them (3 now;
// H200, B=256, replayed: 4.6 → 2.5–3.6 µs per dispatch).
// `write_row` (norm_f32.wgsl or norm_f16.wgsl, kernels.rs picks) writes xn in f32, or the
// tensor-core GEMM's f16 copy xh: rows of h_words words, two halves each (pack2x16float, so no
// shader f16 needed), zero past cols.
struct Params {
    cols: u32,
    x_stride: u32,
    w_off: u32,  // offset of w in smalls
    eps_bits: u32,
    head: u32,   // 1: rows run.out_row0 .. + n_out, else 0 .. n_tok
    h_words: u32, // words per xh row (norm_f16.wgsl)
    _pad1: u32,
    _pad2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> xin: array<f32>;        // (n_tok, x_stride)
@group(0) @binding(6) var<storage, read> smalls: array<f32>;     // per-layer vectors

const NWG: u32 = 256u;
var<workgroup> red: array<f32, NWG>;

// Column c of the normed row (0 past cols).
fn normed(row: u32, c: u32, inv: f32) -> f32 {
    if c >= p.cols {
        return 0.0;
    }
    return xin[row * p.x_stride + c] * inv * smalls[p.w_off + c];
}

@compute @workgroup_size(NWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    var nt = run.n_tok;
    var row = t;
    if p.head != 0u {
        nt = run.n_out;
        row = run.out_row0 + t;
    }
    if t >= nt {
        return; // uniform across the workgroup
    }
    var s = 0.0;
    for (var c = lid; c < p.cols; c += NWG) {
        let v = xin[row * p.x_stride + c];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var h = NWG / 2u; h > 0u; h >>= 1u) {
        if lid < h {
            red[lid] += red[lid + h];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(red[0] / f32(p.cols) + bitcast<f32>(p.eps_bits));
    write_row(t, row, inv, lid);
}
