// One thread per (sequence, channel c), looping over the sequence's tokens in order: the
// kernel for larger batches (see scan_common.wgsl for the maths).

// Δ for token row `row` (xdb offset) and channel c.
fn delta(row: u32, c: u32, sd: f32) -> f32 {
    var acc = 0.0;
    for (var g = 0u; g < p.dt_groups; g++) {
        var dv = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            let j = 4u * g + k;
            if j < p.dt_rank {
                dv[k] = xdb[row + j] * sd;
            }
        }
        acc += dot(load_w(c, g, p.dt_groups), dv);
    }
    return softplus(acc + smalls[p.off_dt_bias + c]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let sq = gid.y;
    if c >= p.d_inner || sq >= run.n_seq {
        return;
    }
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
        let dt = delta(row, c, seg_scale(row, p.dt_rank));
        let sb = seg_scale(b0, ns);
        let sc = seg_scale(c0, ns);
        let uc = u[t * di + c];
        var acc = 0.0;
        for (var n = 0u; n < ns; n++) {
            let h = ssm[h0 + n] * exp(dt * smalls[p.off_a + c * ns + n]) + dt * xdb[b0 + n] * sb * uc;
            ssm[h0 + n] = h;
            acc += h * xdb[c0 + n] * sc;
        }
        let yc = acc + smalls[p.off_d + c] * uc;
        y[t * di + c] = yc * silu(xz[t * 2u * di + di + c]);
    }
    shift_window(slot, start, len, c);
}
