// Matrix × few vectors (decode steps and chunks of ≤ TT tokens): out (n, ROWS) = X (n, COLS) · Wᵀ,
// or out += it (residual). Replaces a GEMM where the batch is too small to reuse weights from
// workgroup memory: the cost is reading W once, so the kernel is about latency and bandwidth.
//
// The shape is compiled in (the `const`s ROWS, COLS, GROUPS, TPR, GPT, ADD, HEAD come from a
// header the host writes per matrix), so every loop has a constant trip count: the compiler
// unrolls them and issues all of a thread's weight loads at once, instead of one round trip per
// iteration. A team of TPR threads owns one row; its lane j reads groups j, j + TPR, …
// (consecutive lanes read consecutive words). RPW = 256 / TPR rows per workgroup.
//
// The input file (mv_in4: X as vec4 rows, one 16-byte load per group; mv_in1: scalars, for
// widths that are not a multiple of 4) supplies `load_x`; the prologue file (mv_plain / mv_norm)
// `norm_w` (RMSNorm weights, folded into X) and whether the sum of squares is wanted; the
// epilogue file (mv_store / mv_conv) stores the sums. Vector loads matter: with four scalar loads
// of X (and four of the norm weights) per weight group, the L1 traffic of X was several times
// that of the weights (H200: the LM head took 3.4× longer at 8 tokens than at 1).
struct Params {
    x_stride: u32, // floats per input row
    o_stride: u32, // floats per output row
    layer: u32,    // block index (state offsets)
    aux0: u32,     // prologue / epilogue specific (see mv_*.wgsl)
    aux1: u32,
    aux2: u32,
    aux3: u32,
    aux4: u32,
    aux5: u32,
    aux6: u32,
    aux7: u32,
    aux8: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (n, o_stride)

const WGS: u32 = 256u;
const RPW: u32 = WGS / TPR;
const TT: u32 = 8u; // tokens per workgroup (grid y tiles the rest)
// Values each thread reduces: TT dot products, then TT sums of squares (RMSNorm).
const NV: u32 = 2u * TT;

var<workgroup> red: array<f32, 4096>; // (NV, WGS) partial sums, reduced in place

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let team = lid / TPR;
    let lane = lid % TPR;
    let r = wid.x * RPW + team;
    let rr = min(r, ROWS - 1u); // teams past the last row compute but store nothing
    var nt = run.n_tok;
    var xrow0 = 0u;
    if HEAD {
        nt = run.n_out;
        xrow0 = run.out_row0;
    }
    let t0 = wid.y * TT;
    let tn = min(TT, nt - t0); // the grid has ceil(nt / TT) rows: t0 < nt

    var acc: array<f32, TT>;
    var sq: array<f32, TT>;
    for (var i = 0u; i < GPT; i++) {
        let g = lane + i * TPR;
        if GROUPS % TPR == 0u || g < GROUPS {
            let wv = load_w(rr, g, GROUPS);
            let nw = norm_w(g);
            for (var t = 0u; t < TT; t++) {
                if t < tn {
                    let xv = load_x(xrow0 + t0 + t, g);
                    acc[t] += dot(wv, xv * nw);
                    if NORM {
                        sq[t] += dot(xv, xv);
                    }
                }
            }
        }
    }

    // Log-step tree over each team's TPR lanes; lane 0 ends with the team's sums.
    for (var t = 0u; t < TT; t++) {
        if t < tn {
            red[t * WGS + lid] = acc[t];
            if NORM {
                red[(TT + t) * WGS + lid] = sq[t];
            }
        }
    }
    workgroupBarrier();
    for (var h = TPR / 2u; h > 0u; h >>= 1u) {
        if lane < h {
            for (var t = 0u; t < TT; t++) {
                if t < tn {
                    red[t * WGS + lid] += red[t * WGS + lid + h];
                    if NORM {
                        red[(TT + t) * WGS + lid] += red[(TT + t) * WGS + lid + h];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    // Lane t < tn of the team finishes token t0 + t.
    if lane < tn && r < ROWS {
        let base = team * TPR;
        var s = red[lane * WGS + base];
        if NORM {
            s *= inv_rms(red[(TT + lane) * WGS + base]);
            red[lane * WGS + base] = s; // the conv epilogue reads the normed sums
        }
        let t = t0 + lane;
        let o = t * p.o_stride + r;
        if ADD {
            out[o] += s;
        } else {
            out[o] = s;
        }
    }
    if CONV {
        workgroupBarrier();
        if lane < tn && r < ROWS {
            epilogue(team, lane, r);
        }
    }
}
