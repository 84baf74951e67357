// gemm_coop.wgsl's W straight from the weights, for F16 matrices of whole K-slices (COLS a
// multiple of 16·KS):
// the same buffer as weights_f16.wgsl's, viewed as halves, so whole 16×16 fragments load into
// cooperative matrices with no staging. Row tiles past ROWS read the zero rows that model.rs pads
// F16 matrices with.
@group(0) @binding(2) var<storage, read> wh: array<f16>; // (rows, GROUPS·4)

const WS: u32 = GROUPS * 4u; // halves per W row

// Nothing to load or stage ahead.
fn load_w_slice(lid: u32, r0: u32, g0: u32) {}

fn stage_w_slice(lid: u32) {}

// The W fragment at rows r0 + m0.., K fragment kf.
fn frag_a(r0: u32, m0: u32, kf: u32, kl: u32) -> coop_mat16x16<f16, A> {
    return coopLoadT<coop_mat16x16<f16, A>>(&wh[(r0 + m0) * WS + 16u * kf], WS);
}
