// gemm_coop.wgsl's X straight from its f16 copy, written by rmsnorm.wgsl / conv.wgsl (HALF):
// rows of XS halves, zero past COLS, so whole 16-column fragments load into cooperative
// matrices with no staging. The buffer holds whole token tiles and one row more (model.rs), so
// a tile's rows past the call's tokens read stale values that reach only output columns the
// epilogue drops, and a last slice reaching past XS reads the next row.
@group(0) @binding(12) var<storage, read> xh: array<f16>; // (n, XS)

// Nothing to load or stage ahead.
fn load_x_slice(lid: u32, t0: u32, g0: u32, nt: u32) {}

fn stage_x_slice(lid: u32) {}

// The X fragment at tokens t0 + n0.., K fragment kf.
fn frag_b(t0: u32, n0: u32, kf: u32, kl: u32) -> coop_mat16x16<f16, B> {
    return coopLoad<coop_mat16x16<f16, B>>(&xh[(t0 + n0) * XS + 16u * kf], XS);
}
