// gemm_coop.wgsl's X slices, whichever file brings X (coop_x_half.wgsl, coop_x_staged.wgsl: the
// type `XRaw`, `raw_x` and `half_x`): per K-slice every thread loads NX groups of 4 columns into
// registers, and after the next barrier stores them into the slice tile `xt` as f16.
const NX: u32 = BN * BKG / THREADS; // X groups per thread per slice

var<private> xr: array<XRaw, NX>; // the next slice of X

// The i-th X group (4 columns of one token) this thread loads for the slice at group g0. Tokens
// past the call's and groups past GROUPS read as 0, so a tail needs no other care.
fn x_part(i: u32, lid: u32, t0: u32, g0: u32, nt: u32) -> XRaw {
    let e = i * THREADS + lid;
    let tok = t0 + e / BKG;
    let g = g0 + e % BKG;
    var v = XRaw();
    if tok < nt && g < GROUPS {
        v = raw_x(tok, g);
    }
    return v;
}

// Issues the loads of the slice at group g0.
fn load_x_slice(lid: u32, t0: u32, g0: u32, nt: u32) {
    for (var i = 0u; i < NX; i++) {
        xr[i] = x_part(i, lid, t0, g0, nt);
    }
}

// The loaded slice into `xt`, as f16: one 8-byte store per group.
fn stage_x_slice(lid: u32) {
    for (var i = 0u; i < NX; i++) {
        let e = i * THREADS + lid;
        xt[(e / BKG) * LDG + e % BKG] = half_x(xr[i]);
    }
}
