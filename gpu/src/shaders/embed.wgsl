// x (n_tok, cols) = rows tokmeta[4t] of the embedding matrix (load_w from a weights_*.wgsl). An
// id with the top bit set, FROM_PREV | k, is the greedy token the call before this one computed
// for its sequence k, still in `prev` (model.rs `Feed::Greedy`): this call's own argmax dispatch
// overwrites it only after this one.
struct Params {
    groups: u32, // vec4 groups per embedding row
    cols: u32,   // d_model
    x_stride: u32,
    _pad: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> tokmeta: array<u32>;      // see common.wgsl
@group(0) @binding(5) var<storage, read_write> x: array<f32>;   // (n_tok, x_stride)
@group(0) @binding(6) var<storage, read> prev: array<u32>;      // the last call's argmax (max_batch,)

const FROM_PREV: u32 = 0x80000000u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let t = gid.y;
    if g >= p.groups || t >= run.n_tok {
        return;
    }
    var id = tokmeta[4u * t];
    if (id & FROM_PREV) != 0u {
        id = prev[id & ~FROM_PREV];
    }
    let v = load_w(id, g, p.groups);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < p.cols {
            x[t * p.x_stride + c] = v[k];
        }
    }
}
