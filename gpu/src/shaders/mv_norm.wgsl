// matvec prologue: X = RMSNorm(x) · w = x / sqrt(mean(x²) + eps) · w (Zhang & Sennrich 2019).
// w is folded into the dot product and 1 / rms applied to the finished sum, so the norm costs no
// pass of its own: each team sums x² over the columns it reads anyway.
// aux0: offset of w in smalls; aux1: eps as f32 bits.
// The weights come from `load_nw` (mv_nw1.wgsl or mv_nw4.wgsl).
const NORM: bool = true;

// Norm weights of columns 4g..4g+4.
fn norm_w(g: u32) -> vec4<f32> {
    return load_nw(p.aux0, g);
}

fn inv_rms(sum_sq: f32) -> f32 {
    return 1.0 / sqrt(sum_sq / f32(COLS) + bitcast<f32>(p.aux1));
}
