//! Scalar twins of every kernel: plain Rust, always compiled, the reference the SIMD kernels are
//! tested against and the fallback where no SIMD backend exists.

use super::{Job, QuantX, q4_row, q8_row};
use crate::tensor::{BlockQ4_0, BlockQ8_0, Elems, QK};
use std::ops::Range;

/// Σ a·b, in order.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Σ_b d_w·d_x · Σ_j w_j·x_j over Q8_0 blocks, as ggml's `ggml_vec_dot_q8_0_q8_0`.
fn dot_q8(w: &[BlockQ8_0], qs: &[i8], d: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for ((wb, xq), &dx) in w.iter().zip(qs.chunks_exact(QK)).zip(d) {
        let sumi: i32 = wb.qs.iter().zip(xq).map(|(&a, &b)| a as i32 * b as i32).sum();
        sum += sumi as f32 * (wb.d.to_f32() * dx);
    }
    sum
}

/// Σ_b d_w·d_x · Σ_j (q_j − 8)·x_j over Q4_0 blocks, as ggml's `ggml_vec_dot_q4_0_q8_0`.
fn dot_q4(w: &[BlockQ4_0], qs: &[i8], d: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for ((wb, xq), &dx) in w.iter().zip(qs.chunks_exact(QK)).zip(d) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += ((wb.qs[j] & 0x0F) as i32 - 8) * xq[j] as i32;
            sumi += ((wb.qs[j] >> 4) as i32 - 8) * xq[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (wb.d.to_f32() * dx);
    }
    sum
}

/// Token `t`'s quantised activations: (values, scales).
pub(crate) fn qx_tok(qx: &QuantX, t: usize) -> (&[i8], &[f32]) {
    let nb = qx.nb;
    (&qx.qs[t * nb * QK..(t + 1) * nb * QK], &qx.d[t * nb..(t + 1) * nb])
}

/// out[t, r] = W[r, :] · X[t, :] for r in `rows`, every token.
pub(crate) fn run_rows(job: &Job, rows: Range<usize>) {
    let (cols, n_tok) = (job.w.cols, job.out.n_tok);
    let nb = cols / QK;
    for r in rows {
        for t in 0..n_tok {
            let x = &job.x[t * cols..(t + 1) * cols];
            let v = match job.w.elems {
                Elems::F32(w) => dot_f32(&w[r * cols..(r + 1) * cols], x),
                Elems::F16(w) => w[r * cols..(r + 1) * cols].iter().zip(x).map(|(a, b)| a.to_f32() * b).sum(),
                Elems::BF16(w) => {
                    w[r * cols..(r + 1) * cols].iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
                }
                Elems::Q8_0(w) => {
                    let (qs, d) = qx_tok(job.qx, t);
                    dot_q8(q8_row(w, nb, r), qs, d)
                }
                Elems::Q4_0(w) => {
                    let (qs, d) = qx_tok(job.qx, t);
                    dot_q4(q4_row(w, nb, r), qs, d)
                }
            };
            job.out.set(t, r, v);
        }
    }
}
