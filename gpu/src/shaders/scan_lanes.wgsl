// LANES threads per (sequence, channel c), 4 channels per workgroup: the kernel for small
// batches, where one thread per channel would leave most of the GPU idle (see scan_common.wgsl
// for the maths). Lane j owns Δ's dot-product groups j, j + LANES, … and states n = j,
// j + LANES, …; the sums meet in workgroup memory (log-step trees).
const LANES: u32 = 16u;

var<workgroup> red: array<f32, 64>; // (4 channels, LANES)

// Σ v over the LANES threads of this thread's channel, returned to each of them.
fn lane_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        if lid % LANES < h {
            red[lid] += red[lid + h];
        }
        workgroupBarrier();
    }
    let s = red[lid - lid % LANES];
    workgroupBarrier(); // every lane has read it before the next call overwrites it
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sq = wid.y;
    if sq >= run.n_seq {
        return; // the whole workgroup
    }
    let lane = lid % LANES;
    let c_raw = wid.x * 4u + lid / LANES;
    let live = c_raw < p.d_inner;
    let c = min(c_raw, p.d_inner - 1u); // lanes past d_inner compute but store nothing
    let di = p.d_inner;
    let ns = p.n_state;
    let slot = tokmeta[4u * (p.max_tok + sq)];
    let start = tokmeta[4u * (p.max_tok + sq) + 1u];
    let len = tokmeta[4u * (p.max_tok + sq) + 2u];
    let h0 = ((slot * p.n_layer + p.layer) * di + c) * ns;
    for (var i = 0u; i < len; i++) {
        let t = start + i;
        let row = t * p.xdb_stride;
        let b0 = row + p.dt_rank;
        let c0 = b0 + ns;
        // Δ = softplus(W_dt[c] · δ + b_dt[c])
        let sd = seg_scale(row, p.dt_rank);
        var part = 0.0;
        for (var g = lane; g < p.dt_groups; g += LANES) {
            var dv = vec4<f32>(0.0);
            for (var k = 0u; k < 4u; k++) {
                let j = 4u * g + k;
                if j < p.dt_rank {
                    dv[k] = xdb[row + j] * sd;
                }
            }
            part += dot(load_w(c, g, p.dt_groups), dv);
        }
        let dt = softplus(lane_sum(lid, part) + smalls[p.off_dt_bias + c]);
        let sb = seg_scale(b0, ns);
        let sc = seg_scale(c0, ns);
        let uc = u[t * di + c];
        var acc = 0.0;
        for (var n = lane; n < ns; n += LANES) {
            let h = ssm[h0 + n] * exp(dt * smalls[p.off_a + c * ns + n]) + dt * xdb[b0 + n] * sb * uc;
            if live {
                ssm[h0 + n] = h;
            }
            acc += h * xdb[c0 + n] * sc;
        }
        let yc = lane_sum(lid, acc) + smalls[p.off_d + c] * uc;
        if live && lane == 0u {
            y[t * di + c] = yc * silu(xz[t * 2u * di + di + c]);
        }
    }
    if live && lane == 0u {
        shift_window(slot, start, len, c);
    }
}
