// gemm_coop.wgsl's X from f32 rows (`load_x`: mv_in4.wgsl or mv_in1.wgsl; out_proj's y, which
// has no f16 copy): per K-slice every thread loads NX vec4s into registers and after the next
// barrier converts them into the slice tile as f16.
const NX: u32 = BN * BKG / THREADS; // X vec4 loads per thread per slice

var<private> xr: array<vec4<f32>, NX>; // the next slice of X

// The i-th X vec4 (4 columns of one token) this thread loads for the slice at group g0. Tokens
// past the call's and columns past COLS read as 0, so a tail needs no other care.
fn x_part(i: u32, lid: u32, t0: u32, g0: u32, nt: u32) -> vec4<f32> {
    let e = i * THREADS + lid;
    let tok = t0 + e / BKG;
    let g = g0 + e % BKG;
    var v = vec4<f32>(0.0);
    if tok < nt && g < GROUPS {
        v = load_x(tok, g);
    }
    return v;
}

// Issues the loads of the slice at group g0.
fn load_x_slice(lid: u32, t0: u32, g0: u32, nt: u32) {
    for (var i = 0u; i < NX; i++) {
        xr[i] = x_part(i, lid, t0, g0, nt);
    }
}

// The loaded slice into `xt`, as f16.
fn stage_x_slice(lid: u32) {
    for (var i = 0u; i < NX; i++) {
        let e = i * THREADS + lid;
        let o = (e / BKG) * LDK + 4u * (e % BKG);
        let h = vec4<f16>(xr[i]);
        for (var j = 0u; j < 4u; j++) {
            xt[o + j] = h[j];
        }
    }
}
