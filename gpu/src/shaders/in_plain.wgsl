// matmul prologue: X read as is.
@group(0) @binding(4) var<storage, read> xin: array<f32>; // (n, x_stride)

fn prologue(wx: u32, lid: u32, xrow: u32, tn: u32) {}

// Columns 4g..4g+4 of input row `xrow` (zero past cols).
fn load_x(tl: u32, xrow: u32, g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < p.cols {
            v[k] = xin[xrow * p.x_stride + c];
        }
    }
    return v;
}
