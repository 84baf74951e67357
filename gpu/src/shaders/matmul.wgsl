// Matrix × few vectors (decode at small B): out (n, rows) = X (n, cols) · Wᵀ, or out += it
// (residual). X comes from `load_x` (an in_*.wgsl prologue: plain or RMSNorm), W from `load_w`
// (a weights_*.wgsl file); an out_*.wgsl `epilogue` may use the finished sums (the conv after
// in_proj). Larger batches take gemm.wgsl.
//
// A workgroup owns R output rows × TT tokens: every weight group it loads is used for TT tokens,
// every activation group for R rows. Its 64 threads split the columns (consecutive threads read
// consecutive words); partial sums meet in workgroup memory.
struct Params {
    rows: u32,     // output features
    cols: u32,     // input features
    groups: u32,   // ceil(cols / 4): vec4 groups per weight row
    x_stride: u32, // floats per input row
    o_stride: u32, // floats per output row
    add: u32,      // 1: out += X·Wᵀ (residual), 0: out = X·Wᵀ
    head: u32,     // 1: tokens are run.out_row0.. (n_out of them), else 0.. (n_tok)
    layer: u32,    // block index (state offsets)
    aux0: u32,     // prologue / epilogue specific (see the in_*.wgsl and out_*.wgsl files)
    aux1: u32,
    aux2: u32,
    aux3: u32,
    aux4: u32,
    aux5: u32,
    aux6: u32,
    aux7: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (n, o_stride)

const WG: u32 = 64u;
const R: u32 = 4u; // the four w0..w3 loads in main
const TT: u32 = 8u;

var<workgroup> part: array<f32, 2048>; // (R·TT, WG) partial sums; also the prologue's scratch

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r0 = wid.x * R;
    let t0 = wid.y * TT;
    var nt = run.n_tok;
    var xrow0 = 0u;
    if p.head != 0u {
        nt = run.n_out;
        xrow0 = run.out_row0;
    }
    let tn = select(0u, min(TT, nt - t0), t0 < nt);
    prologue(wid.x, lid, xrow0 + t0, tn);

    // acc[t] holds token t's partial sums for the R = 4 rows in its components: one dynamic
    // index per token, and the token loop stops at tn (1 for a single decode row).
    var acc: array<vec4<f32>, 8>; // (TT,) of (R,)
    let last = p.rows - 1u;
    for (var g = lid; g < p.groups; g += WG) {
        let w0 = load_w(min(r0, last), g, p.groups);
        let w1 = load_w(min(r0 + 1u, last), g, p.groups);
        let w2 = load_w(min(r0 + 2u, last), g, p.groups);
        let w3 = load_w(min(r0 + 3u, last), g, p.groups);
        for (var t = 0u; t < tn; t++) {
            let xv = load_x(t, xrow0 + t0 + t, g);
            acc[t] += vec4<f32>(dot(w0, xv), dot(w1, xv), dot(w2, xv), dot(w3, xv));
        }
    }
    // Reduce the WG partial sums of each live (row, token) pair: a log-step tree over the
    // threads, R·tn sums per step (4 for a single decode row).
    let live = R * tn;
    for (var t = 0u; t < tn; t++) {
        for (var r = 0u; r < R; r++) {
            part[(t * R + r) * WG + lid] = acc[t][r];
        }
    }
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h {
            for (var i = 0u; i < live; i++) {
                part[i * WG + lid] += part[i * WG + lid + h];
            }
        }
        workgroupBarrier();
    }
    if lid < live {
        let t = t0 + lid / R;
        let r = r0 + lid % R;
        let s = part[lid * WG];
        if r < p.rows {
            let o = t * p.o_stride + r;
            if p.add != 0u {
                out[o] += s;
            } else {
                out[o] = s;
            }
            epilogue(lid, t, r);
        }
    }
}
