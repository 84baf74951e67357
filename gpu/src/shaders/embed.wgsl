// x (n_tok, cols) = rows tokmeta[4t] of the embedding matrix (load_w from a weights_*.wgsl).
struct Params {
    groups: u32, // vec4 groups per embedding row
    cols: u32,   // d_model
    x_stride: u32,
    _pad: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> tokmeta: array<u32>;      // see common.wgsl
@group(0) @binding(5) var<storage, read_write> x: array<f32>;   // (n_tok, x_stride)

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let t = gid.y;
    if g >= p.groups || t >= run.n_tok {
        return;
    }
    let v = load_w(tokmeta[4u * t], g, p.groups);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < p.cols {
            x[t * p.x_stride + c] = v[k];
        }
    }
}
