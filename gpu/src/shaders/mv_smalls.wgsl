// The per-layer vectors as scalars, for mv_conv.wgsl when mv_nw4.wgsl reads the norm weights.
@group(0) @binding(6) var<storage, read> smalls: array<f32>; // per-layer vectors
