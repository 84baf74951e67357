// matvec input X read as vec4 (COLS and x_stride multiples of 4): one 16-byte load per group.
@group(0) @binding(10) var<storage, read> xin4: array<vec4<f32>>; // (n, x_stride / 4)

// Columns 4g..4g+4 of input row `row`.
fn load_x(row: u32, g: u32) -> vec4<f32> {
    return xin4[row * (p.x_stride / 4u) + g];
}
