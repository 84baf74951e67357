// matmul prologue: X = RMSNorm(x) · w, x / sqrt(mean(x²) + eps) · w (Zhang & Sennrich 2019).
// Every workgroup recomputes the RMS of its tn ≤ TT rows: cols reads per row, cheaper than a
// dispatch.
// aux0: offset of w in smalls; aux1: eps as f32 bits.
@group(0) @binding(4) var<storage, read> xin: array<f32>;   // (n, x_stride)
@group(0) @binding(6) var<storage, read> smalls: array<f32>; // per-layer vectors

var<workgroup> inv_rms: array<f32, 8>; // (TT,)

fn prologue(wx: u32, lid: u32, xrow: u32, tn: u32) {
    for (var t = 0u; t < tn; t++) {
        var s = 0.0;
        for (var c = lid; c < p.cols; c += WG) {
            let v = xin[(xrow + t) * p.x_stride + c];
            s += v * v;
        }
        part[t * WG + lid] = s;
    }
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if lid < h {
            for (var t = 0u; t < tn; t++) {
                part[t * WG + lid] += part[t * WG + lid + h];
            }
        }
        workgroupBarrier();
    }
    if lid < tn {
        inv_rms[lid] = 1.0 / sqrt(part[lid * WG] / f32(p.cols) + bitcast<f32>(p.aux1));
    }
    workgroupBarrier();
}

// Columns 4g..4g+4 of normed input row `xrow` (tile row tl), zero past cols.
fn load_x(tl: u32, xrow: u32, g: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let c = 4u * g + k;
        if c < p.cols {
            v[k] = xin[xrow * p.x_stride + c] * inv_rms[tl] * smalls[p.aux0 + c];
        }
    }
    return v;
}
