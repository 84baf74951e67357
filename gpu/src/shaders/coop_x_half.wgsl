// gemm_coop.wgsl's X from its f16 copy, written by rmsnorm.wgsl / conv.wgsl (norm_f16.wgsl,
// conv_f16.wgsl): rows of XG groups of 4 halves, zero past COLS. A group is 8 bytes, half of
// what f32 X takes. The slice loops are coop_x.wgsl's.
@group(0) @binding(12) var<storage, read> xh: array<vec2<u32>>; // (n, XG)

alias XRaw = vec2<u32>;

// Group g of token row `tok`, as loaded.
fn raw_x(tok: u32, g: u32) -> XRaw {
    return xh[tok * XG + g];
}

// A loaded group as the 4 halves it holds.
fn half_x(v: XRaw) -> vec4<f16> {
    // unpack, not bitcast<vec4<f16>>: naga 30 types that bitcast as f32 elements.
    return vec4<f16>(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)));
}
