// u (n_tok, d_inner) = SiLU(causal_conv1d(xz[:, :d_inner])) for the GEMM path: one thread per
// (token, pair of channels). Reads the slot's conv window; scan.wgsl shifts it after every reader.
//   u[t, c] = SiLU(b[c] + Σ_j w[c, j] · e[pos + j]),  e = [window; this sequence's inputs]
// `store_half` (conv_f16.wgsl, kernels.rs picks; a no-op in conv_f32.wgsl) also writes the
// tensor-core GEMM's f16 copy uh of u (x_proj's input): rows of h_words words, two halves each,
// zero past d_inner.
struct Params {
    d_inner: u32,
    d_conv: u32,
    n_layer: u32,
    layer: u32,
    off_w: u32, // conv taps (d_inner, d_conv) in smalls
    off_b: u32, // conv bias (d_inner,)
    h_words: u32, // words per uh row: the pairs each row's threads cover
    _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> xz: array<f32>;         // (n_tok, 2·d_inner) = [u_in | z]
@group(0) @binding(6) var<storage, read> smalls: array<f32>;     // per-layer vectors
@group(0) @binding(7) var<storage, read> conv_state: array<f32>; // (slots, n_layer, d_conv−1, d_inner)
@group(0) @binding(8) var<storage, read> tokmeta: array<u32>;    // see common.wgsl
@group(0) @binding(9) var<storage, read_write> u: array<f32>;    // (n_tok, d_inner)

// u[t, c] (0 past d_inner), also stored into u.
fn conv_one(t: u32, c: u32) -> f32 {
    if c >= p.d_inner {
        return 0.0;
    }
    let di = p.d_inner;
    let k = p.d_conv;
    let slot = tokmeta[4u * t + 1u];
    let start = tokmeta[4u * t + 2u];
    let pos = tokmeta[4u * t + 3u];
    let win = (slot * p.n_layer + p.layer) * (k - 1u) * di;
    var s = smalls[p.off_b + c];
    for (var j = 0u; j < k; j++) {
        let i = pos + j;
        var v: f32;
        if i < k - 1u {
            v = conv_state[win + i * di + c];
        } else {
            v = xz[(start + i - (k - 1u)) * 2u * di + c];
        }
        s += smalls[p.off_w + c * k + j] * v;
    }
    let y = silu(s);
    u[t * di + c] = y;
    return y;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    let t = gid.y;
    if q >= p.h_words || t >= run.n_tok {
        return;
    }
    let v = vec2<f32>(conv_one(t, 2u * q), conv_one(t, 2u * q + 1u));
    store_half(t, q, v);
}
