// RMSNorm weights for mv_norm.wgsl, read as vec4 (COLS a multiple of 4; every vector in smalls
// starts at a multiple of 4 floats).
@group(0) @binding(11) var<storage, read> smalls4: array<vec4<f32>>; // per-layer vectors

// Weights of columns 4g..4g+4 of the vector at `off`.
fn load_nw(off: u32, g: u32) -> vec4<f32> {
    return smalls4[off / 4u + g];
}
