// Weight format Q4_0 (ggml block_q4_0 split in two arrays at upload): x = d · (q − 8).
// Each block's 16 bytes are 4 words; byte j holds element j (low nibble) and j + 16 (high), so
// group gb = g % 8 of a block reads word gb % 4, low nibbles for gb < 4 and high ones after.
@group(0) @binding(2) var<storage, read> w: array<u32>;  // quants (rows·cols/32, 4)
@group(0) @binding(3) var<storage, read> ws: array<u32>; // scales (rows·cols/32,) f16, 2 per word

// Elements 4g..4g+4 of row `row`.
fn load_w(row: u32, g: u32, groups: u32) -> vec4<f32> {
    let i = row * groups + g;
    let b = i / 8u;
    let gb = i % 8u;
    let word = w[b * 4u + gb % 4u];
    let shift = (gb / 4u) * 4u;
    let d = unpack2x16float(ws[b / 2u])[b % 2u];
    let v = vec4<u32>(
        extractBits(word, shift, 4u),
        extractBits(word, shift + 8u, 4u),
        extractBits(word, shift + 16u, 4u),
        extractBits(word, shift + 24u, 4u),
    );
    return (vec4<f32>(v) - 8.0) * d;
}

// The coop GEMM's staging (gemm_coop.wgsl) splits load_w in two, so that a slice's loads stay in
// flight across the previous slice's multiplies: `raw_w` only loads (the word, the scale word,
// which half of it is the block's, the nibble shift), `cook_w` decodes at staging.
fn raw_w(row: u32, g: u32, groups: u32) -> vec4<u32> {
    let i = row * groups + g;
    let b = i / 8u;
    let gb = i % 8u;
    return vec4<u32>(w[b * 4u + gb % 4u], ws[b / 2u], b % 2u, (gb / 4u) * 4u);
}

fn cook_w(r: vec4<u32>) -> vec4<f32> {
    let d = unpack2x16float(r.y)[r.z];
    let v = vec4<u32>(
        extractBits(r.x, r.w, 4u),
        extractBits(r.x, r.w + 8u, 4u),
        extractBits(r.x, r.w + 16u, 4u),
        extractBits(r.x, r.w + 24u, 4u),
    );
    return (vec4<f32>(v) - 8.0) * d;
}
