// rmsnorm.wgsl's output as f32 (the f32 GEMM's input).
@group(0) @binding(5) var<storage, read_write> xn: array<f32>;   // (n, cols)

fn write_row(t: u32, row: u32, inv: f32, lid: u32) {
    for (var c = lid; c < p.cols; c += NWG) {
        xn[t * p.cols + c] = normed(row, c, inv);
    }
}
