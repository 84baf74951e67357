// conv.wgsl's f16 copy of u, x_proj's input on tensor cores (coop_x_direct.wgsl reads it).
@group(0) @binding(12) var<storage, read_write> uh: array<u32>; // (n_tok, h_words), 2 halves each

fn store_half(t: u32, q: u32, v: vec2<f32>) {
    uh[t * p.h_words + q] = pack2x16float(v);
}
