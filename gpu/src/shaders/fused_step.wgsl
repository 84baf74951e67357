// Every layer of one sequence's decode step in ONE dispatch: embed, then each layer's in_proj,
// conv, x_proj, scan and out_proj; the final h goes to `x_out`, where the plan's LM head and
// argmax dispatches take it (they fill the whole GPU; the same head inside this dispatch, on its
// P workgroups, took 115 against ~80 µs on an H200). A single stream otherwise pays a dispatch
// boundary (≈ 4–7 µs on an H200) for each of ~100 dispatches a token; here the P workgroups stay
// resident and meet at grid-wide barriers
// (`grid_arrive` / `grid_wait`, ≈ 1.2–1.6 µs at 96–264 workgroups, `examples/grid_sync.rs`), three
// per layer.
//
// Work split. Workgroup w owns channels c0 = w·CPW .. c0 + CPW of d_inner for the whole step, and
// rows w, w + P, … of d_model (out_proj and the residual):
//   A  h → RMSNorm → in_proj rows of its channels (x and z) → conv (its windows) → u;
//      x_proj partial sums over its channels → xch            | barrier
//   B  sum the P partials (a warp per row, its lanes' loads all in flight) → δ, B, C; Δ, scan (its states), gate → y of its channels → xch | sync
//   C  y → out_proj rows it owns, h += → xch (and x_out after the last layer) | barrier
// Channel-owned state (conv windows, SSM states) is read and written by its
// owner only; everything that crosses workgroups goes through `xch`.
//
// Why `@coherent` on `xch`: plain storage loads may hit a multiprocessor's L1, which the barrier
// does not invalidate (H200: every plain read of a word another workgroup wrote after the same
// address was read before came back stale, `examples/grid_sync.rs`). Coherent loads skip it and
// stay ordinary (coalesced) loads; atomics would too, but each lane's atomic load is a request
// of its own. Weights never change, so they load normally.
//
// Why prefetch: a phase's weight loads do not depend on the phase's input, so each phase's
// weights are loaded into registers between the two halves of the barrier that precedes it; the
// barrier's wait hides their latency.
//
// From the header (fused.rs): sizes D, E, NS, R, KC (d_conv), L, XL = R + 2·NS, WGS, P, CPW, CH
// (channels per chunk), the smalls offsets O_*, the xch offsets X_*, EPS, DBC_RMS, SPIN; the
// loaders raw_*/cook_* for in, x, dt, out, emb; team_sum.
@coherent @group(0) @binding(0) var<storage, read_write> xch: array<f32>;
// The barrier's counter (0) and the abandon flag (1).
@group(0) @binding(7) var<storage, read_write> sync: array<atomic<u32>>;
// The final h (row 0 of the plan's hidden states), for the plan's LM head and argmax.
@group(0) @binding(20) var<storage, read_write> x_out: array<f32>;
@group(0) @binding(1) var<storage, read> smalls: array<f32>;
@group(0) @binding(2) var<storage, read> tokmeta: array<u32>;   // see common.wgsl: row 0 only
@group(0) @binding(3) var<storage, read> ids: array<u32>;      // the last call's argmax
@group(0) @binding(5) var<storage, read_write> conv_state: array<f32>; // (slots, L, KC−1, E)
@group(0) @binding(6) var<storage, read_write> ssm: array<f32>;        // (slots, L, NS, E)

const WARPS: u32 = WGS / 32u;
const FROM_PREV: u32 = 0x80000000u;
const DG: u32 = D / 4u;                     // vec4 groups of a d_model row
const EG: u32 = E / 4u;                     // … of a d_inner row
const RG: u32 = (R + 3u) / 4u;              // … of a dt_rank row
const GPL_D: u32 = (DG + 31u) / 32u;        // groups per lane, d_model rows
const GPL_E: u32 = (EG + 31u) / 32u;        // groups per lane, d_inner rows
const NCH: u32 = CPW / CH;                  // channel chunks per workgroup
const IPR: u32 = (2u * CH + WARPS - 1u) / WARPS; // in_proj rows per warp per chunk
const RPW: u32 = (D + P - 1u) / P;          // d_model rows per workgroup
const OPW: u32 = (RPW + WARPS - 1u) / WARPS; // … per warp
const PPL: u32 = (P + 31u) / 32u;           // x_proj partial sums per lane when reducing them
const XR: u32 = (XL + WARPS - 1u) / WARPS;  // x_proj rows per warp when reducing them
const XPT: u32 = (XL + WGS - 1u) / WGS;     // x_proj rows per thread for the partial sums
const XG: u32 = CPW / 4u;                   // x_proj groups of a workgroup's channels
const XGF: u32 = min(XG, 8u);               // … of them prefetched (all, unless one workgroup)
// Loop counts of the strided loops: constant, so the compiler unrolls them and a thread's loads
// are all in flight at once (a loop `i = lid; i < n; i += WGS` went one round trip at a time).
const N_D: u32 = (D + WGS - 1u) / WGS;
const N_DG: u32 = (DG + WGS - 1u) / WGS;
const N_EG: u32 = (EG + WGS - 1u) / WGS;

var<workgroup> hs: array<f32, D>;           // the residual stream h
var<workgroup> xn: array<vec4<f32>, DG>;    // RMSNorm(h) · weights
var<workgroup> red: array<f32, WGS>;
var<workgroup> wsum: array<f32, 32>;
var<workgroup> xzs: array<f32, 2u * CH>;    // in_proj sums of the chunk's channels: x, then z
var<workgroup> zs: array<f32, CPW>;
var<workgroup> us: array<f32, CPW>;
var<workgroup> xdb: array<f32, XL>;
var<workgroup> dts: array<f32, CH>;
var<workgroup> ys: array<vec4<f32>, EG>;
var<workgroup> abort: u32;

var<private> phase: u32;

// A grid-wide barrier in two halves, so that a phase's weight loads go out between them and
// arrive while the workgroup waits: `grid_arrive` counts the workgroup in once its stores are
// done (the device-scope barrier waits for every memory operation the workgroup has in flight,
// so the loads must come after it); `grid_wait` waits until all P have arrived, and returns
// false when the step was abandoned (a wait longer than SPIN polls: the workgroups were not all
// resident), and then every workgroup returns. Stores before the arrival are visible after the
// wait to the coherent loads of `xch`.
fn grid_arrive(lid: u32) {
    phase += 1u;
    storageBarrier();
    if lid == 0u {
        atomicAdd(&sync[0], 1u);
    }
}

fn grid_wait(lid: u32) -> bool {
    if lid == 0u {
        let goal = P * phase;
        var ok = false;
        for (var i = 0u; i < SPIN; i++) {
            if atomicLoad(&sync[0]) >= goal {
                ok = true;
                break;
            }
            if atomicLoad(&sync[1]) != 0u {
                break;
            }
        }
        if !ok {
            atomicStore(&sync[1], 1u);
            abort = 1u;
        }
    }
    storageBarrier();
    return workgroupUniformLoad(&abort) == 0u;
}

// Sum of v over all WGS threads (every thread calls it; every thread gets the sum): each warp's
// sum, then the warps'.
fn block_sum(v: f32, lid: u32) -> f32 {
    let s = team_sum(v, lid);
    if lid % 32u == 0u {
        wsum[lid / 32u] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < WARPS; i++) {
        t += wsum[i];
    }
    workgroupBarrier();
    return t;
}

// hs ← h from xch; xn ← RMSNorm(hs) · smalls[off ..].
fn load_norm(lid: u32, off: u32) {
    for (var k = 0u; k < N_D; k++) {
        let i = lid + WGS * k;
        if i < D {
            hs[i] = xch[X_H + i];
        }
    }
    workgroupBarrier();
    norm_into_xn(lid, off);
}

fn norm_into_xn(lid: u32, off: u32) {
    var nw: array<vec4<f32>, N_DG>;
    for (var k = 0u; k < N_DG; k++) {
        let g = min(lid + WGS * k, DG - 1u);
        nw[k] = vec4(smalls[off + 4u * g], smalls[off + 4u * g + 1u], smalls[off + 4u * g + 2u], smalls[off + 4u * g + 3u]);
    }
    var sq = 0.0;
    for (var k = 0u; k < N_D; k++) {
        let i = lid + WGS * k;
        if i < D {
            sq += hs[i] * hs[i];
        }
    }
    let inv = 1.0 / sqrt(block_sum(sq, lid) / f32(D) + EPS);
    for (var k = 0u; k < N_DG; k++) {
        let g = lid + WGS * k;
        if g < DG {
            let h = vec4(hs[4u * g], hs[4u * g + 1u], hs[4u * g + 2u], hs[4u * g + 3u]);
            xn[g] = h * inv * nw[k];
        }
    }
    workgroupBarrier();
}

// Stacked row of in_proj for local row lr (< 2·CH) of the chunk from channel c0: x rows, then z.
fn in_row(l: u32, c0: u32, lr: u32) -> u32 {
    var r = c0 + lr;
    if lr >= CH {
        r = E + c0 + lr - CH;
    }
    return l * 2u * E + r;
}

// This warp's in_proj weights for the chunk from channel c0: local rows warp + WARPS·i, groups
// lane + 32·k (clamped: the extra lanes' sums are discarded).
fn fetch_in(l: u32, c0: u32, warp: u32, lane: u32) -> array<vec4<u32>, IPR * GPL_D> {
    var a: array<vec4<u32>, IPR * GPL_D>;
    for (var i = 0u; i < IPR; i++) {
        let lr = min(warp + WARPS * i, 2u * CH - 1u);
        for (var k = 0u; k < GPL_D; k++) {
            a[i * GPL_D + k] = raw_in(in_row(l, c0, lr), min(lane + 32u * k, DG - 1u), DG);
        }
    }
    return a;
}

// This warp's out_proj weights of its i-th row, d_model row w + P·(warp + WARPS·i) of layer l.
fn fetch_out(l: u32, w: u32, i: u32, warp: u32, lane: u32) -> array<vec4<u32>, GPL_E> {
    var a: array<vec4<u32>, GPL_E>;
    let r = min(w + P * (warp + WARPS * i), D - 1u);
    for (var k = 0u; k < GPL_E; k++) {
        a[k] = raw_out(l * D + r, min(lane + 32u * k, EG - 1u), EG);
    }
    return a;
}

// x_proj weights over this workgroup's channels (from group g0) of this thread's rows lid + WGS·i.
fn fetch_x(l: u32, g0: u32, lid: u32) -> array<vec4<u32>, XPT * XGF> {
    var a: array<vec4<u32>, XPT * XGF>;
    for (var i = 0u; i < XPT; i++) {
        let r = min(lid + WGS * i, XL - 1u);
        for (var g = 0u; g < XGF; g++) {
            a[i * XGF + g] = raw_x(l * XL + r, g0 + g, EG);
        }
    }
    return a;
}

// What the conv of channel c needs: its taps, its window (KC − 1 values) and its bias.
struct ConvIn {
    taps: array<f32, KC>,
    win: array<f32, KC>,
    bias: f32,
}

fn fetch_conv(l: u32, st: u32, c: u32) -> ConvIn {
    var v: ConvIn;
    let so = l * O_STRIDE;
    for (var t = 0u; t < KC; t++) {
        v.taps[t] = smalls[O_CONVW + so + c * KC + t];
        v.win[t] = conv_state[st * (KC - 1u) + min(t, KC - 2u) * E + c];
    }
    v.bias = smalls[O_CONVB + so + c];
    return v;
}

// Channel c's Δ projection row (dt_rank values) of layer l.
fn fetch_dt(l: u32, c: u32) -> array<vec4<u32>, RG> {
    var a: array<vec4<u32>, RG>;
    for (var g = 0u; g < RG; g++) {
        a[g] = raw_dt(l * E + c, g, RG);
    }
    return a;
}

// 1 / sqrt(mean(v²) + eps) over xdb[start .. start + n] (Falcon-Mamba's δ, B, C norms).
fn seg_scale(start: u32, n: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        s += xdb[start + i] * xdb[start + i];
    }
    return 1.0 / sqrt(s / f32(n) + EPS);
}

@compute @workgroup_size(WGS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wid.x;
    let warp = lid / 32u;
    let lane = lid % 32u;
    let base = w * CPW; // the first channel this workgroup owns
    phase = 0u;
    if lid == 0u {
        abort = 0u;
    }
    var tok = tokmeta[0];
    if (tok & FROM_PREV) != 0u {
        tok = ids[tok & ~FROM_PREV];
    }
    let slot = tokmeta[1];

    // Embedding: every workgroup builds h itself and publishes the rows it owns.
    for (var k = 0u; k < N_DG; k++) {
        let g = min(lid + WGS * k, DG - 1u);
        let v = cook_emb(raw_emb(tok, g, DG));
        hs[4u * g] = v.x;
        hs[4u * g + 1u] = v.y;
        hs[4u * g + 2u] = v.z;
        hs[4u * g + 3u] = v.w;
    }
    workgroupBarrier();
    for (var k = 0u; k < (RPW + WGS - 1u) / WGS; k++) {
        let i = lid + WGS * k;
        if i < RPW && w + P * i < D {
            xch[X_H + w + P * i] = hs[w + P * i];
        }
    }

    var wi = fetch_in(0u, base, warp, lane);
    var wx = fetch_x(0u, base / 4u, lid);
    var cv = fetch_conv(0u, slot * L * E, base + min(lid, CH - 1u));
    // The scan's (channel, state) of this thread: neighbouring lanes take neighbouring channels,
    // so a state's loads and stores are contiguous.
    let sj = lid % CH;
    let sn = lid / CH;
    for (var l = 0u; l < L; l++) {
        let so = l * O_STRIDE;
        let st = (slot * L + l) * E; // this slot and layer's state offset / E

        // ---- A: RMSNorm, in_proj rows of the chunk's channels, conv, x_proj partial sums.
        if l == 0u {
            norm_into_xn(lid, O_NORM);
        } else {
            load_norm(lid, O_NORM + so);
        }
        for (var k = 0u; k < NCH; k++) {
            let c0 = base + k * CH;
            if k > 0u {
                wi = fetch_in(l, c0, warp, lane);
            }
            for (var i = 0u; i < IPR; i++) {
                var s = 0.0;
                for (var q = 0u; q < GPL_D; q++) {
                    let g = lane + 32u * q;
                    if g < DG {
                        s += dot(cook_in(wi[i * GPL_D + q]), xn[g]);
                    }
                }
                s = team_sum(s, lid);
                let lr = warp + WARPS * i;
                if lane == 0u && lr < 2u * CH {
                    xzs[lr] = s;
                }
            }
            workgroupBarrier();
            if k > 0u {
                cv = fetch_conv(l, st, c0 + min(lid, CH - 1u));
            }
            if lid < CH {
                // u = SiLU(b + Σ_t w_t · e_t), e = [window; x]; the window becomes e[1..].
                let c = c0 + lid;
                let x = xzs[lid];
                var s = cv.bias;
                for (var t = 0u; t < KC; t++) {
                    var v = x;
                    if t + 1u < KC {
                        v = cv.win[t];
                    }
                    s += cv.taps[t] * v;
                }
                for (var t = 0u; t + 1u < KC; t++) {
                    var v = x;
                    if t + 2u < KC {
                        v = cv.win[t + 1u];
                    }
                    conv_state[st * (KC - 1u) + t * E + c] = v;
                }
                us[k * CH + lid] = silu(s);
                zs[k * CH + lid] = xzs[CH + lid];
            }
            workgroupBarrier();
        }
        for (var i = 0u; i < XPT; i++) {
            let r = lid + WGS * i;
            var s = 0.0;
            for (var g = 0u; g < XG; g++) {
                let u4 = vec4(us[4u * g], us[4u * g + 1u], us[4u * g + 2u], us[4u * g + 3u]);
                if g < XGF {
                    s += dot(cook_x(wx[i * XGF + g]), u4);
                } else {
                    s += dot(cook_x(raw_x(l * XL + min(r, XL - 1u), base / 4u + g, EG)), u4);
                }
            }
            if r < XL {
                xch[X_PART + r * P + w] = s;
            }
        }
        grid_arrive(lid);
        // The scan's state, A and Δ row of chunk 0, loaded while waiting.
        var h = 0.0;
        var a = 0.0;
        if lid < CH * NS {
            h = ssm[st * NS + sn * E + base + sj];
            a = smalls[O_A + so + sn * E + base + sj];
        }
        var wdt = fetch_dt(l, base + min(lid, CH - 1u));
        if !grid_wait(lid) {
            return;
        }

        // ---- B: δ, B, C from the partial sums; Δ, scan, D skip and gate of each channel.
        // Each warp sums rows warp + WARPS·i, its lanes reading parts lane + 32·k, all at once.
        var pv: array<f32, XR * PPL>;
        for (var i = 0u; i < XR; i++) {
            let r = min(warp + WARPS * i, XL - 1u);
            for (var k = 0u; k < PPL; k++) {
                let q = lane + 32u * k;
                var v = 0.0;
                if q < P {
                    v = xch[X_PART + r * P + q];
                }
                pv[i * PPL + k] = v;
            }
        }
        for (var i = 0u; i < XR; i++) {
            var s = 0.0;
            for (var k = 0u; k < PPL; k++) {
                s += pv[i * PPL + k];
            }
            s = team_sum(s, lid);
            let r = warp + WARPS * i;
            if lane == 0u && r < XL {
                xdb[r] = s;
            }
        }
        workgroupBarrier();
        var sd = 1.0;
        var sb = 1.0;
        var sc = 1.0;
        if DBC_RMS {
            sd = seg_scale(0u, R);
            sb = seg_scale(R, NS);
            sc = seg_scale(R + NS, NS);
        }
        for (var k = 0u; k < NCH; k++) {
            let c0 = base + k * CH;
            if k > 0u {
                wdt = fetch_dt(l, c0 + min(lid, CH - 1u));
            }
            if lid < CH {
                let c = c0 + lid;
                var acc = 0.0;
                for (var g = 0u; g < RG; g++) {
                    var dv = vec4<f32>(0.0);
                    for (var q = 0u; q < 4u; q++) {
                        if 4u * g + q < R {
                            dv[q] = xdb[4u * g + q];
                        }
                    }
                    acc += dot(cook_dt(wdt[g]), dv);
                }
                dts[lid] = softplus(acc * sd + smalls[O_DTB + so + c]);
            }
            workgroupBarrier();
            var contrib = 0.0;
            if lid < CH * NS {
                let c = c0 + sj;
                let hi = (st * NS) + sn * E + c;
                if k > 0u {
                    h = ssm[hi];
                    a = smalls[O_A + so + sn * E + c];
                }
                let dt = dts[sj];
                h = h * exp(dt * a) + dt * us[k * CH + sj] * sb * xdb[R + sn];
                ssm[hi] = h;
                contrib = h * xdb[R + NS + sn];
            }
            red[lid] = contrib;
            workgroupBarrier();
            if lid < CH {
                let c = c0 + lid;
                var acc = 0.0;
                for (var n = 0u; n < NS; n++) {
                    acc += red[n * CH + lid];
                }
                let uc = us[k * CH + lid];
                xch[X_Y + c] = (acc * sc + smalls[O_D + so + c] * uc) * silu(zs[k * CH + lid]);
            }
            workgroupBarrier();
        }
        grid_arrive(lid);
        var wo = fetch_out(l, w, 0u, warp, lane);
        if !grid_wait(lid) {
            return;
        }

        // ---- C: out_proj rows this workgroup owns, h += y · W_outᵀ.
        for (var k = 0u; k < N_EG; k++) {
            let g = lid + WGS * k;
            if g < EG {
                ys[g] = vec4(xch[X_Y + 4u * g], xch[X_Y + 4u * g + 1u], xch[X_Y + 4u * g + 2u], xch[X_Y + 4u * g + 3u]);
            }
        }
        workgroupBarrier();
        for (var i = 0u; i < OPW; i++) {
            if i > 0u {
                wo = fetch_out(l, w, i, warp, lane);
            }
            var s = 0.0;
            for (var q = 0u; q < GPL_E; q++) {
                let g = lane + 32u * q;
                if g < EG {
                    s += dot(cook_out(wo[q]), ys[g]);
                }
            }
            s = team_sum(s, lid);
            let ri = warp + WARPS * i;
            if lane == 0u && ri < RPW && w + P * ri < D {
                let v = hs[w + P * ri] + s;
                xch[X_H + w + P * ri] = v;
                if l + 1u == L {
                    x_out[w + P * ri] = v;
                }
            }
        }
        if l + 1u < L {
            grid_arrive(lid);
            wi = fetch_in(l + 1u, base, warp, lane);
            wx = fetch_x(l + 1u, base / 4u, lid);
            cv = fetch_conv(l + 1u, st + E, base + min(lid, CH - 1u));
            if !grid_wait(lid) {
                return;
            }
        }
    }
}
