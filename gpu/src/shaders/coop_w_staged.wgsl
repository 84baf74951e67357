// gemm_coop.wgsl's W staged: per K-slice every thread loads NW vec4 groups of the weights (any
// format, `raw_w` of its weights_*.wgsl) into registers, and after the next barrier decodes them
// (`cook_w`) into the slice tile as f16.
const NW: u32 = BM * BKG / THREADS; // W vec4 loads per thread per slice

var<workgroup> wt: array<f16, BM * LDK>; // W slice (BM, LDK): rows × k
var<private> wr: array<vec4<u32>, NW>; // the next slice of W, raw

// The i-th W vec4 this thread loads for the slice at group g0: consecutive threads read
// consecutive groups of one row. Rows past ROWS and groups past GROUPS read as 0.
fn w_part(i: u32, lid: u32, r0: u32, g0: u32) -> vec4<u32> {
    let e = i * THREADS + lid;
    let row = r0 + e / BKG;
    let g = g0 + e % BKG;
    var v = vec4<u32>(0u);
    if row < ROWS && g < GROUPS {
        v = raw_w(row, g, GROUPS);
    }
    return v;
}

// Issues the loads of the slice at group g0 (raw: nothing waits for them until staging).
fn load_w_slice(lid: u32, r0: u32, g0: u32) {
    for (var i = 0u; i < NW; i++) {
        wr[i] = w_part(i, lid, r0, g0);
    }
}

// The loaded slice into `wt`, as f16.
fn stage_w_slice(lid: u32) {
    for (var i = 0u; i < NW; i++) {
        let e = i * THREADS + lid;
        let o = (e / BKG) * LDK + 4u * (e % BKG);
        let h = vec4<f16>(cook_w(wr[i]));
        for (var j = 0u; j < 4u; j++) {
            wt[o + j] = h[j];
        }
    }
}

// The subgroup's W fragment at staged rows m0.., K fragment kf (kl: its column in the slice).
fn frag_a(r0: u32, m0: u32, kf: u32, kl: u32) -> coop_mat16x16<f16, A> {
    return coopLoadT<coop_mat16x16<f16, A>>(&wt[m0 * LDK + kl], LDK);
}
