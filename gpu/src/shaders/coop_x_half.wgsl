// gemm_coop.wgsl's X from its f16 copy, written by rmsnorm.wgsl / conv.wgsl (norm_f16.wgsl,
// conv_f16.wgsl): rows of XG groups of 4 halves, zero past COLS. Per K-slice every thread loads
// NX groups (8 bytes each, half of what f32 X takes) into registers and after the next barrier
// copies them into the slice tile.
@group(0) @binding(12) var<storage, read> xh: array<vec2<u32>>; // (n, XG)

const NX: u32 = BN * BKG / THREADS; // X groups per thread per slice

var<private> xr: array<vec2<u32>, NX>; // the next slice of X

// The i-th X group this thread loads for the slice at group g0. Tokens past the call's and
// groups past GROUPS read as 0, so a tail needs no other care.
fn x_part(i: u32, lid: u32, t0: u32, g0: u32, nt: u32) -> vec2<u32> {
    let e = i * THREADS + lid;
    let tok = t0 + e / BKG;
    let g = g0 + e % BKG;
    var v = vec2<u32>(0u);
    if tok < nt && g < GROUPS {
        v = xh[tok * XG + g];
    }
    return v;
}

// Issues the loads of the slice at group g0.
fn load_x_slice(lid: u32, t0: u32, g0: u32, nt: u32) {
    for (var i = 0u; i < NX; i++) {
        xr[i] = x_part(i, lid, t0, g0, nt);
    }
}

// The loaded slice into `xt`.
fn stage_x_slice(lid: u32) {
    for (var i = 0u; i < NX; i++) {
        let e = i * THREADS + lid;
        let o = (e / BKG) * LDK + 4u * (e % BKG);
        // unpack, not bitcast<vec4<f16>>: naga 30 types that bitcast as f32 elements.
        let h = vec4<f16>(vec4<f32>(unpack2x16float(xr[i].x), unpack2x16float(xr[i].y)));
        for (var j = 0u; j < 4u; j++) {
            xt[o + j] = h[j];
        }
    }
}
