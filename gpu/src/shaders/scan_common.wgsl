// Used by scan.wgsl and scan_lead.wgsl: Δ projection + softplus, selective scan, D skip and SiLU(z) gate, then the
// conv window shift. W_dt comes from `load_w` (a weights_*.wgsl file). The sizes NS (d_state),
// DT_RANK and DT_GROUPS are compiled in (a header the host writes), so the loops over them unroll.
//
// Mamba (Gu & Dao 2023), Eqn 2a/2b with ZOH on A and Euler on B:
//   Δ = softplus(W_dt[c] · δ + b_dt[c])
//   h[c, n] ← e^(Δ·A[c, n]) · h[c, n] + Δ · B[n] · u[c]
//   y[c] = (Σ_n h[c, n] · C[n] + D[c] · u[c]) · SiLU(z[c])
struct Params {
    d_inner: u32,
    n_state: u32,
    dt_rank: u32,
    dt_groups: u32,   // ceil(dt_rank / 4)
    n_layer: u32,
    layer: u32,
    d_conv: u32,
    dbc_rms: u32,     // 1: RMSNorm δ, B and C first (Falcon-Mamba)
    eps_bits: u32,    // eps as f32 bits
    off_dt_bias: u32, // offsets into smalls
    off_a: u32,       // A = −exp(A_log), stored transposed: (n_state, d_inner)
    off_d: u32,
    xdb_stride: u32,  // dt_rank + 2·n_state
    max_tok: u32,     // start of the sequence table in tokmeta
    _pad0: u32,
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> xz: array<f32>;           // (n_tok, 2·d_inner) = [u_in | z]
@group(0) @binding(5) var<storage, read> xdb: array<f32>;          // (n_tok, dt_rank + 2·n_state) = [δ | B | C]
@group(0) @binding(6) var<storage, read> smalls: array<f32>;       // per-layer vectors
@group(0) @binding(7) var<storage, read_write> conv_state: array<f32>; // (slots, n_layer, d_conv−1, d_inner)
@group(0) @binding(8) var<storage, read> tokmeta: array<u32>;         // see common.wgsl
@group(0) @binding(9) var<storage, read> u: array<f32>;            // (n_tok, d_inner) conv + SiLU output
@group(0) @binding(10) var<storage, read_write> ssm: array<f32>;   // (slots, n_layer, n_state, d_inner)
@group(0) @binding(11) var<storage, read_write> y: array<f32>;     // (n_tok, d_inner)

// 1 / sqrt(mean(v²) + eps) over xdb[base .. base + n], or 1 when the model has no such norm.
// Called with the constants DT_RANK and NS, so the loop unrolls once inlined.
fn seg_scale(base: u32, n: u32) -> f32 {
    if p.dbc_rms == 0u {
        return 1.0;
    }
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        let v = xdb[base + i];
        s += v * v;
    }
    return 1.0 / sqrt(s / f32(n) + bitcast<f32>(p.eps_bits));
}

// The window of (slot, channel c) becomes the last d_conv − 1 inputs of [window; the sequence's
// len inputs from token start]. Ascending j reads index len + j ≥ j + 1 before anything
// overwrites it.
fn shift_window(slot: u32, start: u32, len: u32, c: u32) {
    let di = p.d_inner;
    let km1 = p.d_conv - 1u;
    let win = (slot * p.n_layer + p.layer) * km1 * di + c;
    for (var j = 0u; j < km1; j++) {
        let idx = len + j;
        var v: f32;
        if idx < km1 {
            v = conv_state[win + idx * di];
        } else {
            v = xz[(start + idx - km1) * 2u * di + c];
        }
        conv_state[win + j * di] = v;
    }
}

// Δ for token row `row` (xdb offset) and channel c.
fn delta(row: u32, c: u32) -> f32 {
    let sd = seg_scale(row, DT_RANK);
    var acc = 0.0;
    for (var g = 0u; g < DT_GROUPS; g++) {
        var dv = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            let j = 4u * g + k;
            if j < DT_RANK {
                dv[k] = xdb[row + j];
            }
        }
        acc += dot(load_w(c, g, DT_GROUPS), dv);
    }
    return softplus(acc * sd + smalls[p.off_dt_bias + c]);
}

