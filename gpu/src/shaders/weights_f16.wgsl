// Weight format F16, read as u32 pairs and widened with unpack2x16float (no SHADER_F16 needed).
// W (rows, groups·4) halves, each row zero-padded to a multiple of 4 halves.
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>; // (rows, groups)

// Elements 4g..4g+4 of row `row`.
fn load_w(row: u32, g: u32, groups: u32) -> vec4<f32> {
    let v = w[row * groups + g];
    return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
}

// The coop GEMM's staging (gemm_coop.wgsl) splits load_w in two, so that a slice's loads stay in
// flight across the previous slice's multiplies: `raw_w` only loads, `cook_w` decodes at staging.
fn raw_w(row: u32, g: u32, groups: u32) -> vec4<u32> {
    return vec4<u32>(w[row * groups + g], 0u, 0u);
}

fn cook_w(r: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(r.x), unpack2x16float(r.y));
}
