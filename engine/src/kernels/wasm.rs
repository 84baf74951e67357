//! wasm32 simd128 kernels (chosen at build time with `-C target-feature=+simd128`).
//!
//! Q8_0 / Q4_0 blocks: bytes are sign-extended to i16x8 and multiplied with `i32x4.dot_i16x8_s`
//! (exact), giving 4 i32 lanes per block; each is converted to f32 and accumulated as
//! `acc += sum · (d_w · d_x)`. Floats: f16 is widened with integer ops (exact, see
//! [`f16x4_to_f32`]), bf16 by a 16-bit shift; f32 multiply then add (simd128 has no FMA).
//! Tiles of `R` rows × `T` tokens as on x86 ([`drive`]).

use super::{Job, QuantX, Tile, drive, q4_row, q8_row};
use crate::tensor::{BlockQ4_0, BlockQ8_0, Elems, QK};
use core::arch::wasm32::*;
use half::{bf16, f16};
use std::ops::Range;

/// Runs rows `rows` of `job`.
pub(crate) fn run_rows(job: &Job, rows: Range<usize>) {
    let n_tok = job.out.n_tok;
    macro_rules! go {
        ($k:expr, $r:literal, $t:literal) => {
            if n_tok == 1 { drive::<_, $r, 1>(&$k, rows, 1) } else { drive::<_, $r, $t>(&$k, rows, n_tok) }
        };
    }
    match job.w.elems {
        Elems::Q8_0(w) => go!(QTile { w, job }, 4, 2),
        Elems::Q4_0(w) => go!(QTile { w, job }, 4, 2),
        Elems::F32(w) => go!(FTile { w, job }, 4, 2),
        Elems::F16(w) => go!(FTile { w, job }, 4, 2),
        Elems::BF16(w) => go!(FTile { w, job }, 4, 2),
    }
}

/// A quantised block as four i16x8 vectors of its signed weights (elements 0..8, .., 24..32).
trait QBlock: Copy {
    fn d(&self) -> f16;
    fn widened(&self) -> [v128; 4];
    fn row(w: &[Self], nb: usize, r: usize) -> &[Self];
}

/// 16 signed bytes as two i16x8.
#[inline(always)]
fn widen(v: v128) -> [v128; 2] {
    [i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v)]
}

/// 32 bytes at `p` as four i16x8.
#[inline(always)]
fn load32_i16(p: &[i8]) -> [v128; 4] {
    assert!(p.len() >= 32);
    // SAFETY: 32 bytes readable (assert); v128 loads need no alignment.
    let (a, b) = unsafe { (v128_load(p.as_ptr().cast()), v128_load(p.as_ptr().add(16).cast())) };
    let ([a0, a1], [b0, b1]) = (widen(a), widen(b));
    [a0, a1, b0, b1]
}

impl QBlock for BlockQ8_0 {
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn widened(&self) -> [v128; 4] {
        load32_i16(&self.qs)
    }
    fn row(w: &[Self], nb: usize, r: usize) -> &[Self] {
        q8_row(w, nb, r)
    }
}

impl QBlock for BlockQ4_0 {
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn widened(&self) -> [v128; 4] {
        // SAFETY: `qs` is 16 readable bytes.
        let raw = unsafe { v128_load(self.qs.as_ptr().cast()) };
        // Low nibbles are elements 0..16, high nibbles 16..32; both minus 8.
        let eight = i8x16_splat(8);
        let lo = i8x16_sub(v128_and(raw, u8x16_splat(0x0F)), eight);
        let hi = i8x16_sub(u8x16_shr(raw, 4), eight);
        let ([a0, a1], [b0, b1]) = (widen(lo), widen(hi));
        [a0, a1, b0, b1]
    }
    fn row(w: &[Self], nb: usize, r: usize) -> &[Self] {
        q4_row(w, nb, r)
    }
}

/// Q8_0 / Q4_0 weights × Q8_0 activations.
struct QTile<'a, B> {
    w: &'a [B],
    job: &'a Job<'a>,
}

impl<B: QBlock> Tile for QTile<'_, B> {
    #[inline(always)]
    fn tile<const R: usize, const T: usize>(&self, r0: usize, t0: usize) {
        let qx: &QuantX = self.job.qx;
        let nb = qx.nb;
        let w: [&[B]; R] = std::array::from_fn(|i| B::row(self.w, nb, r0 + i));
        let xq: [&[i8]; T] = std::array::from_fn(|j| &qx.qs[(t0 + j) * nb * QK..(t0 + j + 1) * nb * QK]);
        let xd: [&[f32]; T] = std::array::from_fn(|j| &qx.d[(t0 + j) * nb..(t0 + j + 1) * nb]);
        let mut acc = [[f32x4_splat(0.0); T]; R];
        for b in 0..nb {
            let dw: [f32; R] = std::array::from_fn(|i| w[i][b].d().to_f32());
            for j in 0..T {
                let xv = load32_i16(&xq[j][b * QK..]);
                let dx = xd[j][b];
                for i in 0..R {
                    let wv = w[i][b].widened();
                    let s = i32x4_add(
                        i32x4_add(i32x4_dot_i16x8(wv[0], xv[0]), i32x4_dot_i16x8(wv[1], xv[1])),
                        i32x4_add(i32x4_dot_i16x8(wv[2], xv[2]), i32x4_dot_i16x8(wv[3], xv[3])),
                    );
                    let sd = f32x4_mul(f32x4_convert_i32x4(s), f32x4_splat(dw[i] * dx));
                    acc[i][j] = f32x4_add(acc[i][j], sd);
                }
            }
        }
        for (i, ai) in acc.iter().enumerate() {
            for (j, &v) in ai.iter().enumerate() {
                self.job.out.set(t0 + j, r0 + i, hsum(v));
            }
        }
    }
}

/// Σ of the 4 lanes.
#[inline(always)]
fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)
}

/// Four f16 (zero-extended to u32 lanes) as f32, exactly: the exponent/mantissa bits shifted
/// into f32 position and scaled by 2^112 (this also normalises subnormals); Inf/NaN get the
/// f32 all-ones exponent.
#[inline(always)]
fn f16x4_to_f32(h: v128) -> v128 {
    let em = v128_and(h, u32x4_splat(0x7FFF));
    let sign = u32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
    let scaled = f32x4_mul(u32x4_shl(em, 13), f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
    let special = i32x4_ge(em, i32x4_splat(0x7C00)); // em < 2^15: a signed compare is exact
    let infnan = v128_or(u32x4_shl(em, 13), u32x4_splat(0x7F80_0000));
    v128_or(v128_bitselect(infnan, scaled, special), sign)
}

/// A float weight format, widened 4 at a time.
trait FloatW: Copy {
    fn load4(w: &[Self]) -> v128;
    fn to_f32(self) -> f32;
}

impl FloatW for f32 {
    #[inline(always)]
    fn load4(w: &[Self]) -> v128 {
        assert!(w.len() >= 4);
        // SAFETY: 4 elements readable (assert).
        unsafe { v128_load(w.as_ptr().cast()) }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatW for f16 {
    #[inline(always)]
    fn load4(w: &[Self]) -> v128 {
        assert!(w.len() >= 4);
        // SAFETY: 4 elements (8 bytes) readable (assert).
        f16x4_to_f32(unsafe { u32x4_load_extend_u16x4(w.as_ptr().cast()) })
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl FloatW for bf16 {
    #[inline(always)]
    fn load4(w: &[Self]) -> v128 {
        assert!(w.len() >= 4);
        // SAFETY: 4 elements (8 bytes) readable (assert). bf16 is the top half of an f32.
        u32x4_shl(unsafe { u32x4_load_extend_u16x4(w.as_ptr().cast()) }, 16)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Float weights × f32 activations.
struct FTile<'a, W> {
    w: &'a [W],
    job: &'a Job<'a>,
}

impl<W: FloatW> Tile for FTile<'_, W> {
    #[inline(always)]
    fn tile<const R: usize, const T: usize>(&self, r0: usize, t0: usize) {
        let cols = self.job.w.cols;
        let w: [&[W]; R] = std::array::from_fn(|i| &self.w[(r0 + i) * cols..(r0 + i + 1) * cols]);
        let x: [&[f32]; T] = std::array::from_fn(|j| &self.job.x[(t0 + j) * cols..(t0 + j + 1) * cols]);
        let mut acc = [[f32x4_splat(0.0); T]; R];
        let mut c = 0;
        while c + 4 <= cols {
            let wv: [v128; R] = std::array::from_fn(|i| W::load4(&w[i][c..]));
            for j in 0..T {
                let xv = f32::load4(&x[j][c..]);
                for i in 0..R {
                    acc[i][j] = f32x4_add(acc[i][j], f32x4_mul(wv[i], xv));
                }
            }
            c += 4;
        }
        for i in 0..R {
            for j in 0..T {
                let tail: f32 = (c..cols).map(|k| w[i][k].to_f32() * x[j][k]).sum();
                self.job.out.set(t0 + j, r0 + i, hsum(acc[i][j]) + tail);
            }
        }
    }
}

/// Σ a·b, 4 lanes × 4 accumulators.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [f32x4_splat(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = i + 4 * k;
            *acc = f32x4_add(*acc, f32x4_mul(f32::load4(&a[o..]), f32::load4(&b[o..])));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = f32x4_add(acc[0], f32x4_mul(f32::load4(&a[i..]), f32::load4(&b[i..])));
        i += 4;
    }
    let v = f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]));
    hsum(v) + (i..n).map(|k| a[k] * b[k]).sum::<f32>()
}

/// X (n · 32,) -> Q8_0 values `qs` (n · 32,) and f16-rounded scales `d` (n,), bit-identical to
/// `quant::quantize_q8_0` (ggml's `quantize_row_q8_0_ref`).
pub(crate) fn quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let (half, one) = (f32x4_splat(0.5), f32x4_splat(1.0));
    for ((xb, qb), d) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d) {
        let v: [v128; 8] = std::array::from_fn(|k| f32::load4(&xb[4 * k..]));
        let m = v.iter().fold(f32x4_splat(0.0), |m, &v| f32x4_max(m, f32x4_abs(v)));
        let m = f32x4_max(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
        let amax = f32x4_extract_lane::<0>(m).max(f32x4_extract_lane::<1>(m));
        let dd = amax / 127.0;
        let id = f32x4_splat(if dd != 0.0 { 1.0 / dd } else { 0.0 });
        *d = f16::from_f32(dd).to_f32();
        // q = roundf(x · id): truncate, then step away from zero on an exact remainder >= 1/2.
        let q: [v128; 8] = std::array::from_fn(|k| {
            let y = f32x4_mul(v[k], id);
            let t = f32x4_trunc(y);
            let f = f32x4_sub(y, t);
            let up = v128_and(f32x4_ge(f, half), one);
            let dn = v128_and(f32x4_le(f, f32x4_neg(half)), one);
            i32x4_trunc_sat_f32x4(f32x4_add(t, f32x4_sub(up, dn)))
        });
        let lo = i8x16_narrow_i16x8(i16x8_narrow_i32x4(q[0], q[1]), i16x8_narrow_i32x4(q[2], q[3]));
        let hi = i8x16_narrow_i16x8(i16x8_narrow_i32x4(q[4], q[5]), i16x8_narrow_i32x4(q[6], q[7]));
        // SAFETY: qb is 32 bytes; v128 stores need no alignment.
        unsafe {
            v128_store(qb.as_mut_ptr().cast(), lo);
            v128_store(qb.as_mut_ptr().add(16).cast(), hi);
        }
    }
}
