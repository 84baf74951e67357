// Tensor-core GEMM (cooperative matrices, 16×16×16, f16 × f16 → f32): the same product as
// gemm.wgsl, out (n, ROWS) = X (n, COLS) · Wᵀ, or out += it with ADD, over the call's logits rows
// with HEAD. Taken only on devices that list that configuration (device.rs); the module starts
// with `enable f16; enable wgpu_cooperative_matrix;` (kernels.rs puts it before everything).
//
// The header (kernels.rs `CoopTile`, `GemmShape`) compiles in the matrix (ROWS, COLS, GROUPS,
// ADD, HEAD) and the tile: WM × WN × WK subgroups of 32 lanes; subgroup (wm, wn, kw) owns a FM × FN block of 16×16 fragments, so the workgroup covers
// BM = 16·WM·FM weight rows × BN = 16·WN·FN tokens, and its WK subgroups split every K-slice
// between them (kw takes fragments kw, kw + WK, ...; their partial sums meet in the epilogue).
// Splitting K inside the workgroup lets narrow matrices (out_proj, x_proj) use small tiles, and
// so many workgroups, without atomics or a second pass.
//
// As C = A·B: A = the W tile (rows × k, row-major in workgroup memory), B = Xᵀ (k × tokens: X's
// rows are B's columns, so column-major), C = outᵀ (rows × tokens, column-major = out's layout).
// Per K-slice of BK = 16·KS columns the workgroup stages W (any weight format, `raw_w` /
// `cook_w`) and X (its f16 copy, coop_x_half.wgsl, or f32 rows, coop_x_staged.wgsl) as f16 in
// workgroup memory, in vec4<f16>s: one 8-byte store per group of 4 columns, not four 2-byte ones
// (H200, B=256: in_proj 19.6 → 15.5 µs, out_proj 23.0 → 15.0, LM head 225 → 186). The fragments
// load from those vec4<f16> arrays with the stride in vec4s: SPV_KHR_cooperative_matrix counts it
// in elements of the array the pointer points into. The next slice's global loads go into
// registers before this slice's multiplies and are decoded only when staged, so their latency
// hides behind the multiplies. (Loading fragments straight from the storage buffers instead, no
// staging, was slower on the H200: in_proj 48 vs 22 µs at B=256.)
// Inputs go through f16: |x| must stay below 65504, and each product carries about 2⁻¹⁰
// relative error (model.rs `gemm_kernel` states the tolerance).

const BM: u32 = 16u * WM * FM; // weight rows per workgroup
const BN: u32 = 16u * WN * FN; // tokens per workgroup
const BK: u32 = 16u * KS; // K-slice in columns
const BKG: u32 = BK / 4u; // K-slice in vec4 groups
const LDK: u32 = BK + 8u; // halves per staged row: 16 B of padding keeps fragment loads conflict-free
const LDG: u32 = LDK / 4u; // the same in groups of 4 halves
const NSG: u32 = WM * WN * WK; // subgroups
const THREADS: u32 = 32u * NSG;
const SLICES: u32 = (GROUPS + BKG - 1u) / BKG;
const KPW: u32 = KS / WK; // K fragments per subgroup per slice
const NW: u32 = BM * BKG / THREADS; // W vec4 loads per thread per slice

struct Params {
    x_stride: u32, // floats per input row (staged X)
    o_stride: u32, // floats per output row
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (n, o_stride)

var<workgroup> wt: array<vec4<f16>, BM * LDG>; // W slice (BM, LDK halves): rows × k
var<workgroup> xt: array<vec4<f16>, BN * LDG>; // X slice (BN, LDK halves): tokens × k
// Each subgroup's 16×16 scratch for the epilogue (column-major: token j, row i at 16j + i). The
// first 256 floats are zeros at the start, the accumulators' initial value.
var<workgroup> cs: array<f32, NSG * 256u>;

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

// The loaded slice into `wt`, as f16: one 8-byte store per group.
fn stage_w_slice(lid: u32) {
    for (var i = 0u; i < NW; i++) {
        let e = i * THREADS + lid;
        wt[(e / BKG) * LDG + e % BKG] = vec4<f16>(cook_w(wr[i]));
    }
}

// The subgroup's W fragment at staged rows m0.., column kl of the slice.
fn frag_a(m0: u32, kl: u32) -> coop_mat16x16<f16, A> {
    return coopLoadT<coop_mat16x16<f16, A>>(&wt[m0 * LDG + kl / 4u], LDG);
}

// The subgroup's X fragment at staged tokens n0.., column kl of the slice.
fn frag_b(n0: u32, kl: u32) -> coop_mat16x16<f16, B> {
    return coopLoad<coop_mat16x16<f16, B>>(&xt[n0 * LDG + kl / 4u], LDG);
}

// Sums fragment (fi, fj) over the K-subgroups and writes it: every subgroup stores its own into
// its scratch, then each thread adds up some elements; consecutive threads take consecutive rows
// of one token, so the global writes are contiguous.
fn write_frag(c: coop_mat16x16<f32, C>, fi: u32, fj: u32, sg: u32, lid: u32, r0: u32, t0: u32, nt: u32) {
    coopStore(c, &cs[sg * 256u], 16u);
    workgroupBarrier();
    for (var e = lid; e < WM * WN * 256u; e += THREADS) {
        let o = e / 256u; // the output subgroup wm + WM·wn
        let i = e % 256u;
        var v = 0.0;
        for (var q = 0u; q < WK; q++) {
            v += cs[(o + q * WM * WN) * 256u + i];
        }
        let tok = t0 + 16u * ((o / WM) * FN + fj) + i / 16u;
        let row = r0 + 16u * ((o % WM) * FM + fi) + i % 16u;
        if tok < nt && row < ROWS {
            let at = tok * p.o_stride + row;
            if ADD {
                out[at] += v;
            } else {
                out[at] = v;
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    // Token tiles vary fastest in launch order: the workgroups that share a row tile run
    // together, so W (the LM head's does not fit in L2) comes from memory once per call.
    let lin = wid.y * nwg.x + wid.x;
    let r0 = (lin / nwg.y) * BM;
    let t0 = (lin % nwg.y) * BN;
    let nt = select(run.n_tok, run.n_out, HEAD);
    // This subgroup's fragments: rows 16·(wm·FM + i), tokens 16·(wn·FN + j), K fragments kw + WK·f.
    let wm = sg % WM;
    let wn = (sg / WM) % WN;
    let kw = sg / (WM * WN);
    let m0 = 16u * wm * FM;
    let n0 = 16u * wn * FN;

    for (var i = lid; i < 256u; i += THREADS) {
        cs[i] = 0.0;
    }
    load_w_slice(lid, r0, 0u);
    load_x_slice(lid, t0, 0u, nt);
    workgroupBarrier();
    // Up to 2 × 2 accumulators; FM = 1 or FN = 1 leaves some unused (constant conditions).
    var c00 = coopLoad<coop_mat16x16<f32, C>>(&cs[0], 16u);
    var c01 = c00;
    var c10 = c00;
    var c11 = c00;

    for (var s = 0u; s < SLICES; s++) {
        stage_w_slice(lid);
        stage_x_slice(lid);
        workgroupBarrier();
        // Slice s + 1 into registers: its loads are in flight during slice s's multiplies.
        if s + 1u < SLICES {
            load_w_slice(lid, r0, (s + 1u) * BKG);
            load_x_slice(lid, t0, (s + 1u) * BKG, nt);
        }
        for (var f = 0u; f < KPW; f++) {
            let kl = 16u * (kw + WK * f);
            let a0 = frag_a(m0, kl);
            let b0 = frag_b(n0, kl);
            c00 = coopMultiplyAdd(a0, b0, c00);
            if FN > 1u {
                let b1 = frag_b(n0 + 16u, kl);
                c01 = coopMultiplyAdd(a0, b1, c01);
                if FM > 1u {
                    let a1 = frag_a(m0 + 16u, kl);
                    c10 = coopMultiplyAdd(a1, b0, c10);
                    c11 = coopMultiplyAdd(a1, b1, c11);
                }
            } else if FM > 1u {
                let a1 = frag_a(m0 + 16u, kl);
                c10 = coopMultiplyAdd(a1, b0, c10);
            }
        }
        workgroupBarrier();
    }

    // A tile wholly inside the output, with nothing to add and K not split across subgroups:
    // each subgroup stores its fragments straight to `out`, with no pass through workgroup memory
    // and its barriers (H200, B=256 pipelined: 109.9k → 113.8k tok/s; in_proj and the LM head).
    // The condition is uniform across the workgroup, as write_frag's barriers need. (The stride
    // and offsets are `let`s: naga 30's SPIR-V writer failed on them inline in coopStore.)
    if WK == 1u && !ADD && t0 + BN <= nt && r0 + BM <= ROWS {
        let ld = p.o_stride;
        let at = (t0 + n0) * ld + r0 + m0;
        coopStore(c00, &out[at], ld);
        if FN > 1u {
            let a01 = at + 16u * ld;
            coopStore(c01, &out[a01], ld);
        }
        if FM > 1u {
            let a10 = at + 16u;
            coopStore(c10, &out[a10], ld);
            if FN > 1u {
                let a11 = at + 16u * ld + 16u;
                coopStore(c11, &out[a11], ld);
            }
        }
        return;
    }
    write_frag(c00, 0u, 0u, sg, lid, r0, t0, nt);
    if FN > 1u {
        write_frag(c01, 0u, 1u, sg, lid, r0, t0, nt);
    }
    if FM > 1u {
        write_frag(c10, 1u, 0u, sg, lid, r0, t0, nt);
        if FN > 1u {
            write_frag(c11, 1u, 1u, sg, lid, r0, t0, nt);
        }
    }
}
