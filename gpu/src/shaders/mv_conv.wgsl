// matvec epilogue for in_proj (after mv_norm.wgsl): u = SiLU(causal_conv1d(xz[:, :d_inner])) from
// the finished sums still in workgroup memory. Valid because a small call's tokens all sit in
// one tile (n_tok ≤ TT, so t0 = 0): a token's earlier inputs in its sequence are this team's
// sums too. The slot's conv window is only read here; the scan shifts it after every reader.
//   u[t, c] = SiLU(b[c] + Σ_j w[c, j] · e[pos + j]),  e = [window; this sequence's inputs]
// aux2: conv taps w (d_inner, d_conv) in smalls; aux3: conv bias (d_inner,); aux4: d_conv;
// aux5: n_layer. d_inner = ROWS / 2.
@group(0) @binding(7) var<storage, read> conv_state: array<f32>; // (slots, n_layer, d_conv−1, d_inner)
@group(0) @binding(8) var<storage, read> tokmeta: array<u32>;    // see common.wgsl
@group(0) @binding(9) var<storage, read_write> u_out: array<f32>; // (n_tok, d_inner)

const CONV: bool = true;

// Token t of the call (tile row), row r; the team's sum for token t' is red[t'·WGS + team·TPR].
fn epilogue(team: u32, t: u32, r: u32) {
    let di = ROWS / 2u;
    if r >= di {
        return;
    }
    let k = p.aux4;
    let slot = tokmeta[4u * t + 1u];
    let start = tokmeta[4u * t + 2u];
    let pos = tokmeta[4u * t + 3u];
    let win = (slot * p.aux5 + p.layer) * (k - 1u) * di;
    var s = smalls[p.aux3 + r];
    for (var j = 0u; j < k; j++) {
        let i = pos + j;
        var v: f32;
        if i < k - 1u {
            v = conv_state[win + i * di + r];
        } else {
            v = red[(start + i - (k - 1u)) * WGS + team * TPR];
        }
        s += smalls[p.aux2 + r * k + j] * v;
    }
    u_out[t * di + r] = silu(s);
}
