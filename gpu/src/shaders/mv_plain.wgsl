// matvec prologue: X read as is.
const NORM: bool = false;

fn norm_w(g: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}

fn inv_rms(sum_sq: f32) -> f32 {
    return 1.0;
}
