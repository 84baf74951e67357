// Weight format Q8_0 (ggml block_q8_0 split in two arrays at upload): x = d · q.
// Row r holds groups = cols/4 words of 4 signed bytes; block b = (r·groups + g) / 8 has scale d.
@group(0) @binding(2) var<storage, read> w: array<u32>;  // quants (rows, groups), 4 × i8 per word
@group(0) @binding(3) var<storage, read> ws: array<u32>; // scales (rows·cols/32,) f16, 2 per word

// Elements 4g..4g+4 of row `row`.
fn load_w(row: u32, g: u32, groups: u32) -> vec4<f32> {
    let i = row * groups + g;
    let q = i32(w[i]);
    let b = i / 8u;
    let d = unpack2x16float(ws[b / 2u])[b % 2u];
    // extractBits on i32 sign-extends: each byte is one i8 quant.
    let v = vec4<i32>(extractBits(q, 0u, 8u), extractBits(q, 8u, 8u), extractBits(q, 16u, 8u), extractBits(q, 24u, 8u));
    return vec4<f32>(v) * d;
}

// The coop GEMM's staging (gemm_coop.wgsl) splits load_w in two, so that a slice's loads stay in
// flight across the previous slice's multiplies: `raw_w` only loads (the quant word, the scale
// word and which half of it is the block's), `cook_w` decodes at staging.
fn raw_w(row: u32, g: u32, groups: u32) -> vec4<u32> {
    let i = row * groups + g;
    let b = i / 8u;
    return vec4<u32>(w[i], ws[b / 2u], b % 2u, 0u);
}

fn cook_w(r: vec4<u32>) -> vec4<f32> {
    let q = i32(r.x);
    let d = unpack2x16float(r.y)[r.z];
    let v = vec4<i32>(extractBits(q, 0u, 8u), extractBits(q, 8u, 8u), extractBits(q, 16u, 8u), extractBits(q, 24u, 8u));
    return vec4<f32>(v) * d;
}
