// conv.wgsl without the f16 copy.
fn store_half(t: u32, q: u32, v: vec2<f32>) {}
