// The activations of the Mamba block, shared by every kernel source (kernels.rs) and the fused
// step (fused.rs).

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

// softplus(x) = ln(1 + e^x), and x itself above 20 (as PyTorch, ggml and the engine do).
fn softplus(x: f32) -> f32 {
    return select(log(1.0 + exp(x)), x, x > 20.0);
}
