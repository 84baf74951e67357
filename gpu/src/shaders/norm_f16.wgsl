// rmsnorm.wgsl's output as the tensor-core GEMM's f16 copy (coop_x_direct.wgsl reads it).
@group(0) @binding(12) var<storage, read_write> xh: array<u32>;  // (n, h_words), 2 halves each

fn write_row(t: u32, row: u32, inv: f32, lid: u32) {
    for (var q = lid; q < p.h_words; q += NWG) {
        let v = vec2<f32>(normed(row, 2u * q, inv), normed(row, 2u * q + 1u, inv));
        xh[t * p.h_words + q] = pack2x16float(v);
    }
}
