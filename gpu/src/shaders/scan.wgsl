// One thread per (sequence, channel c), looping over the sequence's tokens in order (see
// scan_common.wgsl for the maths). The channel's NS states stay in registers for the whole
// sequence: read once, written once. Every loop but the token loop has a compiled-in trip
// count, so a thread's loads are all in flight together.

@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let sq = gid.y;
    if c >= p.d_inner || sq >= run.n_seq {
        return;
    }
    let di = p.d_inner;
    let slot = tokmeta[4u * (p.max_tok + sq)];
    let start = tokmeta[4u * (p.max_tok + sq) + 1u];
    let len = tokmeta[4u * (p.max_tok + sq) + 2u];
    if sq == 0u && len > 1u {
        return; // scan_lead.wgsl runs a call's multi-token lead
    }
    // States are (n_state, d_inner) per slot and layer: consecutive threads read consecutive words.
    let h0 = (slot * p.n_layer + p.layer) * di * NS + c;
    var h: array<f32, NS>;
    var a: array<f32, NS>;
    for (var n = 0u; n < NS; n++) {
        h[n] = ssm[h0 + n * di];
        a[n] = smalls[p.off_a + n * di + c]; // A is stored (n_state, d_inner): coalesced
    }
    let d = smalls[p.off_d + c];
    for (var i = 0u; i < len; i++) {
        let t = start + i;
        let row = t * p.xdb_stride;
        let b0 = row + DT_RANK;
        let c0 = b0 + NS;
        let dt = delta(row, c);
        let uc = u[t * di + c];
        let bu = dt * uc * seg_scale(b0, NS);
        var acc = 0.0;
        for (var n = 0u; n < NS; n++) {
            h[n] = h[n] * exp(dt * a[n]) + bu * xdb[b0 + n];
            acc += h[n] * xdb[c0 + n];
        }
        let yc = acc * seg_scale(c0, NS) + d * uc;
        y[t * di + c] = yc * silu(xz[t * 2u * di + di + c]);
    }
    for (var n = 0u; n < NS; n++) {
        ssm[h0 + n * di] = h[n];
    }
    shift_window(slot, start, len, c);
}
