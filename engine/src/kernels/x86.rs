//! x86-64 kernels: AVX2 + FMA + F16C, and AVX-512 (F, BW, VL, VNNI).
//!
//! Every product runs as register tiles of `R` rows × `T` tokens ([`drive`]): a tile loads each
//! weight block once for its `T` tokens and each activation block once for its `R` rows.
//!
//! Q8_0 / Q4_0 block dots:
//! - AVX2 follows ggml's `mul_sum_i8_pairs`: `|w| ⊙ sign(x, w)` with `vpmaddubsw` (u8 × i8 pairs)
//!   then `vpmaddwd` by ones, giving 8 i32 lanes of 4 products each.
//! - AVX-512 uses `vpdpbusd` (u8 × i8, 4 products per i32 lane) on two blocks per register. The
//!   signed weights are offset to unsigned bytes (Q8_0: w + 128 by flipping the sign bit; Q4_0:
//!   the raw nibble q, i.e. w + 8), and the accumulator starts at the precomputed
//!   `-k · Σx` of each lane (`QuantX::corr`), so each lane ends as the exact Σ w·x of its 4 bytes —
//!   the same lane sums the AVX2 path gets.
//!
//! Each lane's i32 sum is converted to f32 and accumulated as `acc += sum · (d_w · d_x)` with FMA;
//! lanes are added at the end of the row.

use super::{Job, QuantX, Tile, drive, q4_row, q8_row};
use crate::tensor::{BlockQ4_0, BlockQ8_0, Elems, QK};
use core::arch::x86_64::*;
use half::f16;
use std::ops::Range;

/// AVX2, FMA and F16C are present.
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Everything the AVX-512 kernels use is present.
pub(crate) fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi")
}

/// Runs rows `rows` of `job` with AVX-512 (`avx512`) or AVX2.
pub(crate) fn run_rows(avx512: bool, job: &Job, rows: Range<usize>) {
    let n_tok = job.out.n_tok;
    macro_rules! go {
        ($k:expr, $r:literal, $t:literal) => {
            if n_tok == 1 { drive::<_, $r, 1>(&$k, rows, 1) } else { drive::<_, $r, $t>(&$k, rows, n_tok) }
        };
    }
    match job.w.elems {
        Elems::Q8_0(w) => {
            let k = QTile { w, job, avx512 };
            if avx512 { go!(k, 4, 4) } else { go!(k, 2, 3) }
        }
        Elems::Q4_0(w) => {
            let k = QTile { w, job, avx512 };
            if avx512 { go!(k, 4, 4) } else { go!(k, 2, 3) }
        }
        Elems::F32(w) => {
            let k = FTile::<F32>::new(w.as_ptr().cast(), w.len(), job, avx512);
            if avx512 { go!(k, 4, 6) } else { go!(k, 4, 2) }
        }
        Elems::F16(w) => {
            let k = FTile::<F16>::new(w.as_ptr().cast(), w.len(), job, avx512);
            if avx512 { go!(k, 4, 6) } else { go!(k, 4, 2) }
        }
        Elems::BF16(w) => {
            let k = FTile::<BF16>::new(w.as_ptr().cast(), w.len(), job, avx512);
            if avx512 { go!(k, 4, 6) } else { go!(k, 4, 2) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_0 / Q4_0

/// A quantised weight block the tiles can read.
trait QBlock: Copy {
    /// The block's scale.
    fn d(&self) -> f16;
    /// The 32 weights as signed bytes w (AVX2: `vpmaddubsw` wants |w| and the signs).
    ///
    /// # Safety
    /// Needs AVX2.
    unsafe fn signed256(&self) -> __m256i;
    /// Blocks `a` and `b` as 64 unsigned bytes w + k (k = 128 for Q8_0, 8 for Q4_0), and their
    /// scales as 16 f32 lanes (8 × d_a, 8 × d_b).
    ///
    /// # Safety
    /// Needs AVX-512 F/BW/VBMI + F16C.
    unsafe fn offset512(a: &Self, b: &Self) -> (__m512i, __m512);
    /// As [`QBlock::offset512`] for the adjacent blocks `p[0]`, `p[1]`, with one load.
    ///
    /// # Safety
    /// Needs AVX-512 F/BW/VBMI + F16C; two blocks readable at `p`.
    unsafe fn pair512(p: *const Self) -> (__m512i, __m512);
    /// The blocks of row `r` of a matrix with `nb` blocks per row.
    fn row(w: &[Self], nb: usize, r: usize) -> &[Self];
}

impl QBlock for BlockQ8_0 {
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    unsafe fn signed256(&self) -> __m256i {
        // SAFETY: `qs` is 32 readable bytes; unaligned loads are allowed.
        unsafe { _mm256_loadu_si256(self.qs.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn offset512(a: &Self, b: &Self) -> (__m512i, __m512) {
        // SAFETY: each `qs` is 32 readable bytes; the caller has AVX-512.
        unsafe {
            let lo = _mm256_loadu_si256(a.qs.as_ptr().cast());
            let hi = _mm256_loadu_si256(b.qs.as_ptr().cast());
            // w + 128 as u8 = w with its sign bit flipped.
            let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            (_mm512_xor_si512(q, _mm512_set1_epi8(-128)), scale2(a.d, b.d))
        }
    }
    #[inline(always)]
    unsafe fn pair512(p: *const Self) -> (__m512i, __m512) {
        // Two blocks are 68 bytes: d0 (0..2), qs0 (2..34), d1 (34..36), qs1 (36..68).
        const QS: [u8; 64] = {
            let mut ix = [0u8; 64];
            let mut i = 0;
            while i < 32 {
                ix[i] = 2 + i as u8;
                ix[32 + i] = 36 + i as u8; // >= 64 picks from the second register
                i += 1;
            }
            ix
        };
        const D: [u16; 32] = {
            let mut ix = [17u16; 32]; // word 17 = byte 34 = d1
            let mut i = 0;
            while i < 8 {
                ix[i] = 0; // d0
                i += 1;
            }
            ix
        };
        // SAFETY: 68 bytes are readable at p (two blocks): 64 loaded plainly, the last 4 by mask.
        unsafe {
            let a = _mm512_loadu_si512(p.cast());
            let b = _mm512_maskz_loadu_epi8(0xF, p.cast::<i8>().add(64));
            let q = _mm512_permutex2var_epi8(a, _mm512_loadu_si512(QS.as_ptr().cast()), b);
            let d = _mm512_permutexvar_epi16(_mm512_loadu_si512(D.as_ptr().cast()), a);
            (_mm512_xor_si512(q, _mm512_set1_epi8(-128)), _mm512_cvtph_ps(_mm512_castsi512_si256(d)))
        }
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
    unsafe fn signed256(&self) -> __m256i {
        // SAFETY: `qs` is 16 readable bytes; the caller has AVX2.
        unsafe {
            let raw = _mm_loadu_si128(self.qs.as_ptr().cast());
            // Low nibbles are elements 0..16, high nibbles 16..32.
            let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(raw), _mm_srli_epi16::<4>(raw));
            _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8))
        }
    }
    #[inline(always)]
    unsafe fn offset512(a: &Self, b: &Self) -> (__m512i, __m512) {
        // SAFETY: each `qs` is 16 readable bytes; the caller has AVX-512.
        unsafe {
            let ab = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(a.qs.as_ptr().cast())),
                _mm_loadu_si128(b.qs.as_ptr().cast()),
            );
            let z = _mm512_castsi256_si512(ab);
            // 128-bit lanes [a, a, b, b]; shift lanes 1 and 3 so they hold the high nibbles.
            let z = _mm512_shuffle_i64x2::<0x50>(z, z);
            let z = _mm512_mask_srli_epi16::<4>(z, 0xFF00_FF00, z);
            (_mm512_and_si512(z, _mm512_set1_epi8(0x0F)), scale2(a.d, b.d))
        }
    }
    #[inline(always)]
    unsafe fn pair512(p: *const Self) -> (__m512i, __m512) {
        // Two blocks are 36 bytes: d0 (0..2), qs0 (2..18), d1 (18..20), qs1 (20..36).
        const QS: [u8; 64] = {
            let mut ix = [0u8; 64];
            let mut i = 0;
            while i < 16 {
                // 128-bit lanes [qs0, qs0, qs1, qs1]
                ix[i] = 2 + i as u8;
                ix[16 + i] = 2 + i as u8;
                ix[32 + i] = 20 + i as u8;
                ix[48 + i] = 20 + i as u8;
                i += 1;
            }
            ix
        };
        const D: [u16; 32] = {
            let mut ix = [9u16; 32]; // word 9 = byte 18 = d1
            let mut i = 0;
            while i < 8 {
                ix[i] = 0; // d0
                i += 1;
            }
            ix
        };
        // SAFETY: 36 bytes are readable at p (two blocks), and the mask loads only those.
        unsafe {
            let a = _mm512_maskz_loadu_epi8((1u64 << 36) - 1, p.cast());
            let z = _mm512_permutexvar_epi8(_mm512_loadu_si512(QS.as_ptr().cast()), a);
            // Lanes 1 and 3 hold the high nibbles (elements 16..32 of each block).
            let z = _mm512_mask_srli_epi16::<4>(z, 0xFF00_FF00, z);
            let d = _mm512_permutexvar_epi16(_mm512_loadu_si512(D.as_ptr().cast()), a);
            (_mm512_and_si512(z, _mm512_set1_epi8(0x0F)), _mm512_cvtph_ps(_mm512_castsi512_si256(d)))
        }
    }
    fn row(w: &[Self], nb: usize, r: usize) -> &[Self] {
        q4_row(w, nb, r)
    }
}

/// Q8_0 / Q4_0 weights × Q8_0 activations.
struct QTile<'a, B> {
    w: &'a [B],
    job: &'a Job<'a>,
    avx512: bool,
}

impl<B: QBlock> Tile for QTile<'_, B> {
    #[inline(always)]
    fn tile<const R: usize, const T: usize>(&self, r0: usize, t0: usize) {
        let qx: &QuantX = self.job.qx;
        let nb = qx.nb;
        // Slicing checks that every row and token the tile reads exists.
        let w: [&[B]; R] = std::array::from_fn(|i| B::row(self.w, nb, r0 + i));
        let xq: [&[i8]; T] = std::array::from_fn(|j| &qx.qs[(t0 + j) * nb * QK..(t0 + j + 1) * nb * QK]);
        let xd: [&[f32]; T] = std::array::from_fn(|j| &qx.d[(t0 + j) * nb..(t0 + j + 1) * nb]);
        let v = if self.avx512 {
            let xc: [&[i32]; T] = std::array::from_fn(|j| &qx.corr[(t0 + j) * nb * 8..(t0 + j + 1) * nb * 8]);
            // SAFETY: the backend was picked because the CPU has AVX-512 (`has_avx512`); every slice
            // holds `nb` blocks' worth of data, which is what the tile reads.
            unsafe {
                q_tile_512::<B, R, T>(
                    w.map(<[B]>::as_ptr),
                    xq.map(<[i8]>::as_ptr),
                    xd.map(<[f32]>::as_ptr),
                    xc.map(<[i32]>::as_ptr),
                    nb,
                )
            }
        } else {
            // SAFETY: as above, with AVX2 + FMA + F16C (`has_avx2`).
            unsafe {
                q_tile_avx2::<B, R, T>(
                    w.map(<[B]>::as_ptr),
                    xq.map(<[i8]>::as_ptr),
                    xd.map(<[f32]>::as_ptr),
                    nb,
                )
            }
        };
        for (i, vr) in v.iter().enumerate() {
            for (j, &vt) in vr.iter().enumerate() {
                self.job.out.set(t0 + j, r0 + i, vt);
            }
        }
    }
}

/// Tile of Σ_b d_w·d_x · (w_b · x_b), AVX2. W rows (R × nb blocks) @ X tokens (T × nb blocks).
///
/// # Safety
/// Needs AVX2 + FMA + F16C; each `w[i]` points at `nb` blocks, `xq[j]` at `nb · 32` bytes and
/// `xd[j]` at `nb` scales.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q_tile_avx2<B: QBlock, const R: usize, const T: usize>(
    w: [*const B; R],
    xq: [*const i8; T],
    xd: [*const f32; T],
    nb: usize,
) -> [[f32; T]; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut ws = [_mm256_setzero_si256(); R];
        let mut wa = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        for i in 0..R {
            // SAFETY: b < nb, and w[i] points at nb blocks.
            let blk = unsafe { &*w[i].add(b) };
            // SAFETY: this function has AVX2.
            ws[i] = unsafe { blk.signed256() };
            wa[i] = _mm256_sign_epi8(ws[i], ws[i]);
            dw[i] = _mm256_set1_ps(blk.d().to_f32());
        }
        for j in 0..T {
            // SAFETY: b < nb: 32 bytes at xq[j] + 32b and one scale at xd[j] + b are in bounds.
            let (xv, dx) = unsafe {
                (_mm256_loadu_si256(xq[j].add(b * QK).cast()), _mm256_broadcast_ss(&*xd[j].add(b)))
            };
            for i in 0..R {
                // Σ pairs |w|·(±x) in i16, then pairs of those in i32: 8 lanes of 4 products.
                let p = _mm256_maddubs_epi16(wa[i], _mm256_sign_epi8(xv, ws[i]));
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                acc[i][j] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    acc.map(|a| a.map(hsum256))
}

/// Two f16 scales as 16 f32 lanes: 8 × a then 8 × b.
#[inline(always)]
unsafe fn scale2(a: f16, b: f16) -> __m512 {
    // SAFETY: called only from functions with AVX-512 F + F16C.
    unsafe {
        let h = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_set1_epi16(a.to_bits() as i16)),
            _mm_set1_epi16(b.to_bits() as i16),
        );
        _mm512_cvtph_ps(h)
    }
}

/// One step of [`q_tile_512`]: blocks b and b + 1, or block b alone when `ONE`.
#[inline(always)]
unsafe fn q_step_512<B: QBlock, const R: usize, const T: usize, const ONE: bool>(
    acc: &mut [[__m512; T]; R],
    w: &[*const B; R],
    xq: &[*const i8; T],
    xd: &[*const f32; T],
    xc: &[*const i32; T],
    b: usize,
) {
    let b1 = if ONE { b } else { b + 1 };
    // SAFETY (whole body): called from `q_tile_512` (AVX-512) with b1 < nb, so blocks b and b1 of
    // every row, 64 (ONE: the first 32) bytes at xq[j] + 32b, 16 (ONE: 8) corrections at
    // xc[j] + 8b and scales b, b1 are in bounds; masked loads do not touch masked-out bytes.
    unsafe {
        let mut wu = [_mm512_setzero_si512(); R];
        let mut dw = [_mm512_setzero_ps(); R];
        for i in 0..R {
            (wu[i], dw[i]) =
                if ONE { B::offset512(&*w[i].add(b), &*w[i].add(b1)) } else { B::pair512(w[i].add(b)) };
        }
        for j in 0..T {
            let (xv, c) = if ONE {
                // Upper half zero: its products vanish whatever the weights there.
                (
                    _mm512_maskz_loadu_epi8(0xFFFF_FFFF, xq[j].add(b * QK)),
                    _mm512_maskz_loadu_epi32(0x00FF, xc[j].add(b * 8)),
                )
            } else {
                (_mm512_loadu_si512(xq[j].add(b * QK).cast()), _mm512_loadu_si512(xc[j].add(b * 8).cast()))
            };
            let d0 = _mm256_castps_pd(_mm256_broadcast_ss(&*xd[j].add(b)));
            let d1 = _mm256_castps_pd(_mm256_broadcast_ss(&*xd[j].add(b1)));
            let dx = _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(d0), d1));
            for i in 0..R {
                // Lanes: -k·Σx + Σ (w + k)·x = Σ w·x over 4 bytes.
                let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, wu[i], xv));
                acc[i][j] = _mm512_fmadd_ps(s, _mm512_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
}

/// How far ahead (in blocks) the AVX-512 quantised tiles prefetch each weight row.
const PREFETCH_BLOCKS: usize = 32;

/// Tile of Σ_b d_w·d_x · (w_b · x_b), AVX-512 VNNI, two blocks per step.
///
/// # Safety
/// Needs AVX-512 F/BW/VL/VNNI + FMA + F16C; each `w[i]` points at `nb` blocks, `xq[j]` at
/// `nb · 32` bytes, `xd[j]` at `nb` scales and `xc[j]` at `nb · 8` corrections.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn q_tile_512<B: QBlock, const R: usize, const T: usize>(
    w: [*const B; R],
    xq: [*const i8; T],
    xd: [*const f32; T],
    xc: [*const i32; T],
    nb: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut b = 0;
    while b + 2 <= nb {
        // Ask for each row's data ~1 KiB ahead: the rows are separate streams, and a decode
        // step reads every weight once, from DRAM, with little compute to hide the latency.
        // A prefetch is only a hint: past the end of the matrix it does nothing.
        for wi in &w {
            _mm_prefetch::<_MM_HINT_T0>(wi.wrapping_add(b + PREFETCH_BLOCKS).cast());
        }
        // SAFETY: b + 1 < nb; the caller's contract covers the rest.
        unsafe { q_step_512::<B, R, T, false>(&mut acc, &w, &xq, &xd, &xc, b) };
        b += 2;
    }
    if b < nb {
        // SAFETY: b < nb.
        unsafe { q_step_512::<B, R, T, true>(&mut acc, &w, &xq, &xd, &xc, b) };
    }
    acc.map(|a| a.map(|v| _mm512_reduce_add_ps(v)))
}

/// Σ of the 8 lanes.
#[inline(always)]
fn hsum256(v: __m256) -> f32 {
    // SAFETY: only called from AVX2 functions (and AVX is implied by their features).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

// ---------------------------------------------------------------------------------------------
// F32 / F16 / BF16

/// A float weight format the tiles widen to f32.
trait FloatW {
    /// Bytes per element.
    const SIZE: usize;
    /// 8 elements at `p` as f32.
    ///
    /// # Safety
    /// Needs AVX2 + F16C; 8 elements readable at `p`.
    unsafe fn load8(p: *const u8) -> __m256;
    /// 16 elements at `p` (those in `m`; the rest read as 0) as f32.
    ///
    /// # Safety
    /// Needs AVX-512 F/BW/VL + F16C; the elements in `m` readable at `p`.
    unsafe fn load16(p: *const u8, m: __mmask16) -> __m512;
}

struct F32;
struct F16;
struct BF16;

impl FloatW for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load16(p: *const u8, m: __mmask16) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_maskz_loadu_ps(m, p.cast()) }
    }
}

impl FloatW for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load16(p: *const u8, m: __mmask16) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast())) }
    }
}

impl FloatW for BF16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract. bf16 is the top half of an f32.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
        }
    }
    #[inline(always)]
    unsafe fn load16(p: *const u8, m: __mmask16) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                m,
                p.cast(),
            ))))
        }
    }
}

/// Float weights × f32 activations.
struct FTile<'a, W> {
    /// Weight bytes: `len` elements of format `W`.
    w: *const u8,
    len: usize,
    cols: usize,
    job: &'a Job<'a>,
    avx512: bool,
    _w: std::marker::PhantomData<W>,
}

impl<'a, W> FTile<'a, W> {
    fn new(w: *const u8, len: usize, job: &'a Job<'a>, avx512: bool) -> Self {
        Self { w, len, cols: job.w.cols, job, avx512, _w: std::marker::PhantomData }
    }
}

impl<W: FloatW> Tile for FTile<'_, W> {
    #[inline(always)]
    fn tile<const R: usize, const T: usize>(&self, r0: usize, t0: usize) {
        let cols = self.cols;
        assert!((r0 + R) * cols <= self.len && (t0 + T) * cols <= self.job.x.len());
        // SAFETY (pointer arithmetic): rows r0..r0+R are inside the weights by the assert.
        let w: [*const u8; R] = std::array::from_fn(|i| unsafe { self.w.add((r0 + i) * cols * W::SIZE) });
        let x: [*const f32; T] = std::array::from_fn(|j| self.job.x[(t0 + j) * cols..].as_ptr());
        let v = if self.avx512 {
            // SAFETY: AVX-512 present (`has_avx512`); each row and token has `cols` elements (assert).
            unsafe { f_tile_512::<W, R, T>(w, x, cols) }
        } else {
            // SAFETY: AVX2 + FMA + F16C present (`has_avx2`); as above.
            unsafe { f_tile_avx2::<W, R, T>(w, x, cols) }
        };
        for (i, vr) in v.iter().enumerate() {
            for (j, &vt) in vr.iter().enumerate() {
                self.job.out.set(t0 + j, r0 + i, vt);
            }
        }
    }
}

/// One 8-column step of [`f_tile_avx2`] at weight element offset `c` (pointers pre-offset).
#[inline(always)]
unsafe fn f_step_avx2<W: FloatW, const R: usize, const T: usize>(
    acc: &mut [[__m256; T]; R],
    w: &[*const u8; R],
    x: &[*const f32; T],
) {
    // SAFETY: called from `f_tile_avx2` with 8 readable elements behind every pointer.
    unsafe {
        let wv: [__m256; R] = std::array::from_fn(|i| W::load8(w[i]));
        for j in 0..T {
            let xv = _mm256_loadu_ps(x[j]);
            for i in 0..R {
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }
}

/// Tile of W rows (R × cols) · X tokens (T × cols), AVX2 + FMA.
///
/// # Safety
/// Needs AVX2 + FMA + F16C; `cols` elements behind each pointer.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f_tile_avx2<W: FloatW, const R: usize, const T: usize>(
    w: [*const u8; R],
    x: [*const f32; T],
    cols: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut c = 0;
    while c + 8 <= cols {
        // SAFETY: c + 8 <= cols elements behind each pointer.
        unsafe {
            let wc = w.map(|p| p.add(c * W::SIZE));
            let xc = x.map(|p| p.add(c));
            f_step_avx2::<W, R, T>(&mut acc, &wc, &xc);
        }
        c += 8;
    }
    if c < cols {
        // Tail of < 8 columns: copy into zero-padded buffers.
        let n = cols - c;
        let mut wb = [[0u8; 32]; R];
        let mut xb = [[0f32; 8]; T];
        for i in 0..R {
            // SAFETY: n elements remain behind w[i] at offset c.
            unsafe { std::ptr::copy_nonoverlapping(w[i].add(c * W::SIZE), wb[i].as_mut_ptr(), n * W::SIZE) };
        }
        for j in 0..T {
            // SAFETY: n elements remain behind x[j] at offset c.
            unsafe { std::ptr::copy_nonoverlapping(x[j].add(c), xb[j].as_mut_ptr(), n) };
        }
        // SAFETY: the buffers hold 8 elements each.
        unsafe {
            f_step_avx2::<W, R, T>(
                &mut acc,
                &wb.each_ref().map(|b| b.as_ptr()),
                &xb.each_ref().map(|b| b.as_ptr()),
            )
        };
    }
    acc.map(|a| a.map(hsum256))
}

/// One 16-column step of [`f_tile_512`]; only the columns in `m` are read.
#[inline(always)]
unsafe fn f_step_512<W: FloatW, const R: usize, const T: usize, const MASK: bool>(
    acc: &mut [[__m512; T]; R],
    w: &[*const u8; R],
    x: &[*const f32; T],
    m: __mmask16,
) {
    // SAFETY: called from `f_tile_512` (AVX-512) with 16 (MASK: the elements in m) readable
    // elements behind every pointer.
    unsafe {
        let wv: [__m512; R] = std::array::from_fn(|i| W::load16(w[i], if MASK { m } else { !0 }));
        for j in 0..T {
            let xv = if MASK { _mm512_maskz_loadu_ps(m, x[j]) } else { _mm512_loadu_ps(x[j]) };
            for i in 0..R {
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }
}

/// Tile of W rows (R × cols) · X tokens (T × cols), AVX-512.
///
/// # Safety
/// Needs AVX-512 F/BW/VL + FMA + F16C; `cols` elements behind each pointer.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn f_tile_512<W: FloatW, const R: usize, const T: usize>(
    w: [*const u8; R],
    x: [*const f32; T],
    cols: usize,
) -> [[f32; T]; R] {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut c = 0;
    while c + 16 <= cols {
        // SAFETY: c + 16 <= cols elements behind each pointer.
        unsafe {
            let wc = w.map(|p| p.add(c * W::SIZE));
            let xc = x.map(|p| p.add(c));
            f_step_512::<W, R, T, false>(&mut acc, &wc, &xc, !0);
        }
        c += 16;
    }
    if c < cols {
        let m: __mmask16 = (1u16 << (cols - c)) - 1;
        // SAFETY: the cols - c elements selected by m remain behind each pointer.
        unsafe {
            let wc = w.map(|p| p.add(c * W::SIZE));
            let xc = x.map(|p| p.add(c));
            f_step_512::<W, R, T, true>(&mut acc, &wc, &xc, m);
        }
    }
    acc.map(|a| a.map(|v| _mm512_reduce_add_ps(v)))
}

/// Σ a·b with AVX2 + FMA (both x86 backends).
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the x86 backends are picked only when `has_avx2()`.
    unsafe { dot_f32_avx2(a, b) }
}

/// # Safety
/// Needs AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (loads below): every load reads 8 elements at i with i + 8 <= n.
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            unsafe {
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * k)),
                    _mm256_loadu_ps(pb.add(i + 8 * k)),
                    *acc,
                )
            };
        }
        i += 32;
    }
    while i + 8 <= n {
        unsafe { acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]) };
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum256(v);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Activation quantisation

/// X (n · 32,) -> Q8_0 values `qs` (n · 32,) and f16-rounded scales `d` (n,), bit-identical to
/// `quant::quantize_q8_0` (ggml's `quantize_row_q8_0_ref`).
pub(crate) fn quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    assert!(x.len() == qs.len() && x.len() == d.len() * QK);
    // SAFETY: the x86 backends are picked only when `has_avx2()`; lengths checked above.
    unsafe { quantize_q8_avx2(x, qs, d) }
}

/// # Safety
/// Needs AVX2 + F16C; `x` and `qs` hold `32 · d.len()` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    for (b, d) in d.iter_mut().enumerate() {
        // SAFETY (loads and store): block b is inside x and qs (caller's contract).
        let p = unsafe { x.as_ptr().add(b * QK) };
        let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(p.add(8 * k)) });
        // amax = max |x|
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
            _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let dd = amax / 127.0;
        let id = _mm256_set1_ps(if dd != 0.0 { 1.0 / dd } else { 0.0 });
        // The f16 scale, rounded to nearest even like `f16::from_f32`, and back.
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(dd));
        *d = _mm_cvtss_f32(_mm_cvtph_ps(h));
        // q = roundf(x · id): truncate, then step away from zero on an exact remainder >= 1/2.
        let q: [__m256i; 4] = std::array::from_fn(|k| {
            let y = _mm256_mul_ps(v[k], id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let f = _mm256_sub_ps(y, t);
            let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half), one);
            let dn =
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(f, _mm256_sub_ps(_mm256_setzero_ps(), half)), one);
            _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_sub_ps(up, dn)))
        });
        // Pack i32 -> i8 (per 128-bit lane), then put the 4-byte groups back in order.
        let q = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: 32 bytes of block b are inside qs.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK).cast(), q) };
    }
}

/// corr (len / 4,) = -k · Σ of each 4 bytes of qs (len,), for the AVX-512 kernels.
pub(crate) fn offset_corrections(qs: &[i8], k: i32, corr: &mut [i32]) {
    assert!(qs.len().is_multiple_of(QK) && corr.len() * 4 == qs.len());
    // SAFETY: the x86 backends are picked only when `has_avx2()`; lengths checked above.
    unsafe { offset_corrections_avx2(qs, k, corr) }
}

/// # Safety
/// Needs AVX2; `qs.len() == 4 · corr.len()`, a multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn offset_corrections_avx2(qs: &[i8], k: i32, corr: &mut [i32]) {
    let (ones8, ones16, mk) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1), _mm256_set1_epi32(-k));
    for b in 0..qs.len() / QK {
        // SAFETY: block b is inside qs (32 bytes) and corr (8 lanes).
        unsafe {
            let q = _mm256_loadu_si256(qs.as_ptr().add(b * QK).cast());
            let s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
            _mm256_storeu_si256(corr.as_mut_ptr().add(b * 8).cast(), _mm256_mullo_epi32(s, mk));
        }
    }
}
