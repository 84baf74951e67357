// The scan of a call's lead (sequence 0 when it has more than one token: a prompt's piece), with
// the states spread over threads: NS threads per channel, one state each, CPW channels per
// workgroup. scan.wgsl keeps a channel's NS states in one thread and walks the tokens one by
// one; for a lone sequence that leaves the GPU nearly idle (d_inner threads) and puts the Δ
// projection (DT_RANK multiply-adds) on the serial path of every token (H200, a 64-token prefill:
// 3.4 of 6.4 ms in the scan). Here, per slice of TC tokens:
//   A. every (token, channel) Δ of the slice, in parallel, into `dts`;
//   B. the serial walk: each thread updates its one state per token and leaves h·C in `part`;
//   C. every (token, channel) y = Σ_n part + D·u, gated by SiLU(z), in parallel.
// The maths is scan_common.wgsl's; sums over the states run in another order than scan.wgsl's.

const CPW: u32 = 4u;          // channels per workgroup
const WGT: u32 = CPW * NS;    // threads per workgroup
const TC: u32 = 32u;          // tokens per slice

var<workgroup> dts: array<f32, TC * CPW>;        // (TC, CPW) Δ
var<workgroup> part: array<f32, TC * CPW * NS>;  // (TC, CPW, NS) h·C

@compute @workgroup_size(WGT)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if run.n_tok <= run.n_seq {
        return; // no multi-token lead in this call (the plan only runs this kernel when there is)
    }
    let di = p.d_inner;
    let cl = lid / NS;
    let n = lid % NS;
    let c0 = wid.x * CPW;
    let c = min(c0 + cl, di - 1u); // threads past the last channel compute but store nothing
    let live = c0 + cl < di;
    let slot = tokmeta[4u * p.max_tok];
    let start = tokmeta[4u * p.max_tok + 1u];
    let len = tokmeta[4u * p.max_tok + 2u];
    let hi = (slot * p.n_layer + p.layer) * di * NS + n * di + c;
    var h = ssm[hi];
    let a = smalls[p.off_a + n * di + c];
    for (var t0 = 0u; t0 < len; t0 += TC) {
        let tn = min(TC, len - t0);
        // A. Δ of every (token, channel) of the slice.
        for (var i = lid; i < tn * CPW; i += WGT) {
            let t = start + t0 + i / CPW;
            let ci = min(c0 + i % CPW, di - 1u);
            dts[i] = delta(t * p.xdb_stride, ci);
        }
        workgroupBarrier();
        // B. The serial walk, one state per thread.
        for (var i = 0u; i < tn; i++) {
            let t = start + t0 + i;
            let row = t * p.xdb_stride;
            let b0 = row + DT_RANK;
            let cc0 = b0 + NS;
            let dt = dts[i * CPW + cl];
            let uc = u[t * di + c];
            h = h * exp(dt * a) + dt * uc * seg_scale(b0, NS) * xdb[b0 + n];
            part[(i * CPW + cl) * NS + n] = h * xdb[cc0 + n] * seg_scale(cc0, NS);
        }
        workgroupBarrier();
        // C. y of every (token, channel) of the slice.
        for (var i = lid; i < tn * CPW; i += WGT) {
            let ci = c0 + i % CPW;
            if ci < di {
                let t = start + t0 + i / CPW;
                var acc = 0.0;
                for (var k = 0u; k < NS; k++) {
                    acc += part[i * NS + k];
                }
                let uc = u[t * di + ci];
                let yc = acc + smalls[p.off_d + ci] * uc;
                y[t * di + ci] = yc * silu(xz[t * 2u * di + di + ci]);
            }
        }
        workgroupBarrier();
    }
    if live {
        ssm[hi] = h;
        if n == 0u {
            shift_window(slot, start, len, c);
        }
    }
}
