// Weight format F32. W (rows, groups·4) as vec4 groups, each row zero-padded to a multiple of 4.
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>; // (rows, groups)

// Elements 4g..4g+4 of row `row`.
fn load_w(row: u32, g: u32, groups: u32) -> vec4<f32> {
    return w[row * groups + g];
}

// The coop GEMM's staging (gemm_coop.wgsl) splits load_w in two, so that a slice's loads stay in
// flight across the previous slice's multiplies: `raw_w` only loads, `cook_w` decodes at staging.
fn raw_w(row: u32, g: u32, groups: u32) -> vec4<u32> {
    return bitcast<vec4<u32>>(w[row * groups + g]);
}

fn cook_w(r: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(r);
}
