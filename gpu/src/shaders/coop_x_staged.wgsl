// gemm_coop.wgsl's X from f32 rows (`load_x`: mv_in4.wgsl or mv_in1.wgsl; out_proj's y, which
// has no f16 copy), converted to f16 when staged. The slice loops are coop_x.wgsl's.
alias XRaw = vec4<f32>;

// Columns 4g..4g+4 of token row `tok`, as loaded.
fn raw_x(tok: u32, g: u32) -> XRaw {
    return load_x(tok, g);
}

// A loaded group as f16.
fn half_x(v: XRaw) -> vec4<f16> {
    return vec4<f16>(v);
}
