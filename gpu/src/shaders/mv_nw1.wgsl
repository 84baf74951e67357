// RMSNorm weights for mv_norm.wgsl, read as scalars (any width).
@group(0) @binding(6) var<storage, read> smalls: array<f32>; // per-layer vectors

// Weights of columns 4g..4g+4 of the vector at `off` (zero past COLS: those x are zero too).
fn load_nw(off: u32, g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < COLS {
            v[k] = smalls[off + c];
        }
    }
    return v;
}
