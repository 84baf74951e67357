// matvec input X read as scalars (any width).
@group(0) @binding(4) var<storage, read> xin: array<f32>; // (n, x_stride)

// Columns 4g..4g+4 of input row `row`, zero past COLS.
fn load_x(row: u32, g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < COLS {
            v[k] = xin[row * p.x_stride + c];
        }
    }
    return v;
}
