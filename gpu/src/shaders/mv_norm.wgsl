// matvec prologue: X = RMSNorm(x) · w = x / sqrt(mean(x²) + eps) · w (Zhang & Sennrich 2019).
// w is folded into the dot product and 1 / rms applied to the finished sum, so the norm costs no
// pass of its own: each team sums x² over the columns it reads anyway.
// aux0: offset of w in smalls; aux1: eps as f32 bits.
@group(0) @binding(4) var<storage, read> xin: array<f32>;    // (n, x_stride)
@group(0) @binding(6) var<storage, read> smalls: array<f32>; // per-layer vectors

const NORM: bool = true;

// Norm weights of columns 4g..4g+4 (zero past COLS: those x are zero too).
fn norm_w(g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < COLS {
            v[k] = smalls[p.aux0 + c];
        }
    }
    return v;
}

fn inv_rms(sum_sq: f32) -> f32 {
    return 1.0 / sqrt(sum_sq / f32(COLS) + bitcast<f32>(p.aux1));
}
