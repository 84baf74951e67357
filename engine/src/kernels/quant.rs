//! Quantise and dequantise, with ggml's reference formulas (`ggml-quants.c`).
//!
//! - Q8_0: `d = amax / 127`, `q = round(x / d)` (computed as `x · (1/d)`, rounding half away from
//!   zero), `x ≈ d · q`.
//! - Q4_0: `d = max / −8` where `max` is the value of largest magnitude (sign kept),
//!   `q = min(15, trunc(x / d + 8.5))`, `x ≈ d · (q − 8)`; element j in the low nibble of byte j,
//!   element j + 16 in the high nibble.

use super::{Backend, QuantX};
use crate::tensor::{BlockQ4_0, BlockQ8_0, Elems, Matrix, QK};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// C's `roundf` (half away from zero) for |v| < 2^31, without a libm call so that it
/// vectorises: truncate, then step away from zero when the exact remainder is at least one half.
#[inline(always)]
pub(crate) fn round_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32; // exact: t has the sign of v and |t| <= |v|
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// Quantises one block of 32 values as ggml's `quantize_row_q8_0_ref`: returns (d as f16, q).
#[inline(always)]
fn q8_block(x: &[f32], qs: &mut [i8]) -> f16 {
    // max |x| via the bit patterns: for non-NaN values, |x| orders like its bits as an integer.
    let amax_bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    let amax = f32::from_bits(amax_bits);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v · id| <= 127 (up to rounding), so the cast cannot wrap.
        *q = round_away(v * id) as i8;
    }
    f16::from_f32(d)
}

/// x (n · 32,) -> out (n,) Q8_0 blocks, matching ggml's `quantize_row_q8_0_ref` bit for bit.
///
/// # Panics
/// If `x.len() != 32 · out.len()`.
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_q8_0: x must hold 32 values per block");
    for (blk, xb) in out.iter_mut().zip(x.chunks_exact(QK)) {
        blk.d = q8_block(xb, &mut blk.qs);
    }
}

/// x (n · 32,) -> out (n,) Q4_0 blocks, matching ggml's `quantize_row_q4_0_ref` bit for bit.
///
/// # Panics
/// If `x.len() != 32 · out.len()`.
pub fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_q4_0: x must hold 32 values per block");
    for (blk, xb) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        blk.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            // C's `(int8_t)(x + 8.5f)` truncates toward zero; the value is in [0, 17).
            let lo = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let hi = ((xb[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            blk.qs[j] = lo | (hi << 4);
        }
    }
}

/// Q8_0 blocks -> out (32 · n,): x = d · q.
fn dequant_q8(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in o.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Q4_0 blocks -> out (32 · n,): x = d · (q − 8).
fn dequant_q4(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let (lo, hi) = o.split_at_mut(QK / 2);
        for j in 0..QK / 2 {
            lo[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            hi[j] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// out (len,) = all elements of `e`, dequantised to f32.
///
/// # Panics
/// If `out.len() != e.len()`.
pub fn dequantize(e: &Elems, out: &mut [f32]) {
    assert_eq!(out.len(), e.len(), "dequantize: out must hold every element");
    match *e {
        Elems::F32(v) => out.copy_from_slice(v),
        Elems::F16(v) => v.convert_to_f32_slice(out),
        Elems::BF16(v) => v.convert_to_f32_slice(out),
        Elems::Q8_0(v) => dequant_q8(v, out),
        Elems::Q4_0(v) => dequant_q4(v, out),
    }
}

/// out (cols,) = row `r` of W, dequantised (embedding lookup).
///
/// # Panics
/// If `r >= w.rows` or `out.len() != w.cols`.
pub fn dequantize_row(out: &mut [f32], w: &Matrix, r: usize) {
    assert!(r < w.rows, "dequantize_row: row {r} of {}", w.rows);
    assert_eq!(out.len(), w.cols, "dequantize_row: out must hold one row");
    let (a, n) = (r * w.cols, w.cols);
    let row = match w.elems {
        Elems::F32(v) => Elems::F32(&v[a..a + n]),
        Elems::F16(v) => Elems::F16(&v[a..a + n]),
        Elems::BF16(v) => Elems::BF16(&v[a..a + n]),
        Elems::Q8_0(v) => Elems::Q8_0(&v[a / QK..(a + n) / QK]),
        Elems::Q4_0(v) => Elems::Q4_0(&v[a / QK..(a + n) / QK]),
    };
    dequantize(&row, out);
}

/// X (n_tok, cols) -> `qx`: each row quantised to Q8_0 as [`quantize_q8_0`], stored split (values,
/// f32 scales) and, for the AVX-512 kernels, with the offset corrections `-k · Σ q` per 4 bytes.
pub(crate) fn quantize_x(be: Backend, x: &[f32], cols: usize, n_tok: usize, k: i32, qx: &mut QuantX) {
    debug_assert_eq!(cols % QK, 0);
    let nb = cols / QK;
    let n = n_tok * cols;
    // Grows only when a product is larger than the scratch was made for.
    qx.qs.resize(n, 0);
    qx.d.resize(n_tok * nb, 0.0);
    qx.nb = nb;
    let (xs, qs, d) = (&x[..n], &mut qx.qs[..n], &mut qx.d[..n_tok * nb]);
    match be {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 | Backend::Avx512 => super::x86::quantize_q8(xs, qs, d),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Backend::Simd128 => super::wasm::quantize_q8(xs, qs, d),
        _ => {
            for ((xb, qb), d) in xs.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d) {
                *d = q8_block(xb, qb).to_f32();
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if be == Backend::Avx512 {
        qx.corr.resize(n / 4, 0);
        super::x86::offset_corrections(&qx.qs[..n], k, &mut qx.corr[..n / 4]);
    }
    let _ = k; // only the AVX-512 kernels use the corrections
}
