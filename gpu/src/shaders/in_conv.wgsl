// matmul prologue: X = u = SiLU(causal_conv1d(xz[:, :d_inner])), computed on the fly from the
// slot's conv window (read only here; scan.wgsl shifts it after every reader is done).
// Workgroup column 0 also stores u for the scan.
// aux0: conv taps w (d_inner, d_conv) in smalls; aux1: conv bias (d_inner,); aux2: d_conv;
// aux3: n_layer.
@group(0) @binding(4) var<storage, read> xz: array<f32>;         // (n_tok, 2·d_inner) = [u | z]
@group(0) @binding(6) var<storage, read> smalls: array<f32>;     // per-layer vectors
@group(0) @binding(7) var<storage, read> conv_state: array<f32>; // (slots, n_layer, d_conv−1, d_inner)
@group(0) @binding(8) var<storage, read> tokmeta: array<u32>;       // see common.wgsl
@group(0) @binding(9) var<storage, read_write> u_out: array<f32>; // (n_tok, d_inner)

var<private> write_u: bool;

fn prologue(wx: u32, lid: u32, xrow: u32, tn: u32) {
    write_u = wx == 0u;
}

// out[t, c] = SiLU(b[c] + Σ_j w[c, j] · e[pos + j]), e = [window; this sequence's inputs]
fn conv_silu(t: u32, c: u32) -> f32 {
    let di = p.cols;
    let k = p.aux2;
    let slot = tokmeta[4u * t + 1u];
    let start = tokmeta[4u * t + 2u];
    let pos = tokmeta[4u * t + 3u];
    let win = (slot * p.aux3 + p.layer) * (k - 1u) * di;
    var s = smalls[p.aux1 + c];
    for (var j = 0u; j < k; j++) {
        let i = pos + j;
        var v: f32;
        if i < k - 1u {
            v = conv_state[win + i * di + c];
        } else {
            v = xz[(start + i - (k - 1u)) * p.x_stride + c];
        }
        s += smalls[p.aux0 + c * k + j] * v;
    }
    return silu(s);
}

// Columns 4g..4g+4 of u for token `xrow`, zero past d_inner.
fn load_x(tl: u32, xrow: u32, g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < p.cols {
            v[k] = conv_silu(xrow, c);
            if write_u {
                u_out[xrow * p.cols + c] = v[k];
            }
        }
    }
    return v;
}
