//! CPU kernels: matrix products over ggml-typed weights, with SIMD and a scalar twin for each.
//!
//! How a product is computed, step by step:
//!
//! 1. [`matmul`] picks the weight format. For Q8_0 / Q4_0 weights it first quantises each
//!    activation row to Q8_0 blocks into the [`Scratch`] (ggml's `quantize_row_q8_0_ref`), so
//!    the inner loop is an integer dot product per 32-element block, scaled by `d_w · d_x`, as
//!    in ggml's `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q4_0_q8_0`. F16 / BF16 weights are
//!    widened to f32 in registers and accumulated with FMA; F32 is a plain FMA loop.
//! 2. The rows are split into ranges (one per rayon worker with the `threads` feature and a large
//!    enough product, else one range). Each range runs the backend's row kernel.
//! 3. A row kernel is weight-stationary: it walks a tile of `R` rows × `T` tokens, so every weight
//!    block it loads is used for `T` tokens and every activation block for `R` rows.
//!
//! Backends, picked once at run time ([`backend_name`]):
//! - `avx512-vnni` (x86-64 with AVX-512 F/BW/VL + VNNI): Q8_0/Q4_0 with `vpdpbusd` on two blocks
//!   per 512-bit register; float formats with 512-bit FMA.
//! - `avx2-fma` (x86-64 with AVX2 + FMA + F16C): ggml's `maddubs` sign trick; 256-bit FMA.
//! - `simd128` (wasm32 built with `+simd128`): `i32x4.dot_i16x8_s` on widened bytes.
//! - `scalar`: plain Rust, always compiled; the twin every SIMD kernel is tested against.
//!
//! Integer block dots are exact in every backend; only the order in which the scaled f32
//! partial sums are added differs, so backends agree to f32 rounding.

mod quant;
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

use crate::tensor::{BlockQ4_0, BlockQ8_0, Elems, Matrix, QK};
use std::ops::Range;

pub use quant::{dequantize, dequantize_row, quantize_q4_0, quantize_q8_0};

/// The implementation chosen for this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // each target compiles only some variants
pub(crate) enum Backend {
    /// Plain Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL, VNNI) + FMA + F16C.
    Avx512,
    /// wasm32 simd128.
    Simd128,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2-fma",
            Self::Avx512 => "avx512-vnni",
            Self::Simd128 => "simd128",
        }
    }

    /// Backends this machine can run, best last (for tests and benchmarks).
    #[allow(dead_code)]
    pub(crate) fn available() -> Vec<Backend> {
        let mut v = vec![Backend::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx2() {
                v.push(Backend::Avx2);
            }
            if x86::has_avx512() {
                v.push(Backend::Avx512);
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        v.push(Backend::Simd128);
        v
    }
}

/// The backend picked for this process, detected once.
pub(crate) fn backend() -> Backend {
    static PICK: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| *Backend::available().last().unwrap_or(&Backend::Scalar))
}

/// Which implementation the dispatcher picked, for logs and benchmarks: `"avx512-vnni"`,
/// `"avx2-fma"`, `"simd128"` or `"scalar"`.
pub fn backend_name() -> &'static str {
    backend().name()
}

/// Activations quantised to Q8_0, in the split layout the row kernels read.
///
/// Token `t`, block `b` of a row of `nb` blocks lives at index `t * nb + b`.
#[derive(Default)]
pub(crate) struct QuantX {
    /// Quantised values; (n_tok, cols).
    pub qs: Vec<i8>,
    /// Block scales (the f16 scale widened to f32); (n_tok, cols / 32).
    pub d: Vec<f32>,
    /// `-k · Σ qs` over each group of 4 bytes, for kernels that offset the weights to unsigned
    /// bytes (`vpdpbusd`): k = 128 for Q8_0 weights (w + 128), 8 for Q4_0 nibbles; (n_tok, cols / 4).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub corr: Vec<i32>,
    /// Blocks per row.
    pub nb: usize,
}

/// Reusable buffers the kernels need (activations quantised to Q8_0), allocated once; the
/// per-token path allocates nothing.
///
/// A product larger than the sizes given to [`Scratch::new`] grows the buffers once.
#[derive(Default)]
pub struct Scratch {
    qx: QuantX,
}

impl Scratch {
    /// Buffers for products whose activations have up to `max_cols` columns and `max_tokens`
    /// rows (tokens).
    pub fn new(max_cols: usize, max_tokens: usize) -> Self {
        let n = max_cols.div_ceil(QK) * QK * max_tokens.max(1);
        Self {
            qx: QuantX {
                qs: Vec::with_capacity(n),
                d: Vec::with_capacity(n / QK),
                corr: Vec::with_capacity(n / 4),
                nb: 0,
            },
        }
    }
}

/// Where a row kernel writes: `out[t * ld + r]`. A raw pointer so that workers can write
/// disjoint row ranges of a (n_tok, rows) buffer at once.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    ptr: *mut f32,
    /// Row stride of the output: the matrix's `rows`.
    ld: usize,
    /// Tokens.
    n_tok: usize,
}

// SAFETY: `Out` is only handed to workers that write disjoint row ranges (see `matmul`), and the
// buffer it points to outlives the parallel section.
unsafe impl Send for Out {}
// SAFETY: as above; concurrent users never write the same element.
unsafe impl Sync for Out {}

impl Out {
    /// Writes `out[t, r] = v`.
    #[inline(always)]
    pub(crate) fn set(&self, t: usize, r: usize, v: f32) {
        assert!(t < self.n_tok && r < self.ld);
        // SAFETY: in bounds by the assert (the buffer holds n_tok * ld elements, checked in
        // `matmul`); callers own row `r` exclusively for the duration of the product.
        unsafe { *self.ptr.add(t * self.ld + r) = v }
    }
}

/// Everything a row kernel needs: the weights, the activations in the form that weight format
/// wants, and where to write.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub w: &'a Matrix<'a>,
    /// Activations (n_tok, cols), for float weights.
    pub x: &'a [f32],
    /// Quantised activations, for Q8_0 / Q4_0 weights.
    pub qx: &'a QuantX,
    pub out: Out,
}

/// Runs rows `rows` of the product on one thread with backend `be`.
pub(crate) fn run_rows(be: Backend, job: &Job, rows: Range<usize>) {
    match be {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 | Backend::Avx512 => x86::run_rows(be == Backend::Avx512, job, rows),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Backend::Simd128 => wasm::run_rows(job, rows),
        _ => scalar::run_rows(job, rows),
    }
}

/// out (n_tok, rows) = X (n_tok, cols) · Wᵀ, with W a [`Matrix`] (rows, cols) in any [`Elems`]
/// type. `n_tok == 1` is a matrix-vector product.
///
/// # Panics
/// If `x.len() != n_tok * w.cols` or `out.len() != n_tok * w.rows`.
pub fn matmul(out: &mut [f32], w: &Matrix, x: &[f32], n_tok: usize, scratch: &mut Scratch) {
    matmul_with(backend(), out, w, x, n_tok, scratch);
}

/// [`matmul`] with a chosen backend (tests and benchmarks compare them).
pub(crate) fn matmul_with(
    be: Backend,
    out: &mut [f32],
    w: &Matrix,
    x: &[f32],
    n_tok: usize,
    scratch: &mut Scratch,
) {
    assert_eq!(x.len(), n_tok * w.cols, "matmul: x is not (n_tok = {n_tok}, cols = {})", w.cols);
    assert_eq!(out.len(), n_tok * w.rows, "matmul: out is not (n_tok = {n_tok}, rows = {})", w.rows);
    debug_assert_eq!(w.elems.len(), w.rows * w.cols);
    if n_tok == 0 || w.rows == 0 {
        return;
    }
    match w.elems {
        Elems::Q8_0(_) => quant::quantize_x(be, x, w.cols, n_tok, 128, &mut scratch.qx),
        Elems::Q4_0(_) => quant::quantize_x(be, x, w.cols, n_tok, 8, &mut scratch.qx),
        _ => {}
    }
    let job = Job { w, x, qx: &scratch.qx, out: Out { ptr: out.as_mut_ptr(), ld: w.rows, n_tok } };
    run_split(be, &job);
}

#[cfg(feature = "threads")]
/// Rows per chunk are a multiple of this, so that chunks keep whole register tiles.
const ROW_ALIGN: usize = 16;

#[cfg(feature = "threads")]
fn run_split(be: Backend, job: &Job) {
    use rayon::prelude::*;
    let (rows, cols) = (job.w.rows, job.w.cols);
    let threads = rayon::current_num_threads();
    if threads <= 1 || rows * cols * job.out.n_tok < 1 << 16 || rows < 2 * ROW_ALIGN {
        return run_rows(be, job, 0..rows);
    }
    // A few chunks per thread evens out uneven progress; chunks are whole row tiles.
    let chunks = (threads * 4).min(rows / ROW_ALIGN);
    let per = rows.div_ceil(chunks).div_ceil(ROW_ALIGN) * ROW_ALIGN;
    (0..rows.div_ceil(per)).into_par_iter().for_each(|c| {
        // Each chunk writes only its own rows of `out`.
        run_rows(be, job, c * per..((c + 1) * per).min(rows));
    });
}

#[cfg(not(feature = "threads"))]
fn run_split(be: Backend, job: &Job) {
    run_rows(be, job, 0..job.w.rows);
}

/// Σ a\[i\]·b\[i\] for f32 slices (SIMD). Σ a·b over `a.len()` elements.
///
/// # Panics
/// If the lengths differ.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_with(backend(), a, b)
}

/// [`dot_f32`] with a chosen backend.
pub(crate) fn dot_f32_with(be: Backend, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    match be {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 | Backend::Avx512 => x86::dot_f32(a, b),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Backend::Simd128 => wasm::dot_f32(a, b),
        _ => scalar::dot_f32(a, b),
    }
}

/// One kind of register tile: computes and stores out[t0..t0+T, r0..r0+R].
pub(crate) trait Tile {
    fn tile<const R: usize, const T: usize>(&self, r0: usize, t0: usize);
}

/// Walks `rows` × `0..n_tok` in `R` × `T` tiles; leftover rows and tokens take 1-wide tiles.
pub(crate) fn drive<K: Tile, const R: usize, const T: usize>(k: &K, rows: Range<usize>, n_tok: usize) {
    let tokens = |k: &K, r| {
        let mut t = 0;
        while t + T <= n_tok {
            k.tile::<R, T>(r, t);
            t += T;
        }
        while t < n_tok {
            k.tile::<R, 1>(r, t);
            t += 1;
        }
    };
    let mut r = rows.start;
    while r + R <= rows.end {
        tokens(k, r);
        r += R;
    }
    while r < rows.end {
        let mut t = 0;
        while t + T <= n_tok {
            k.tile::<1, T>(r, t);
            t += T;
        }
        while t < n_tok {
            k.tile::<1, 1>(r, t);
            t += 1;
        }
        r += 1;
    }
}

/// The Q8_0 and Q4_0 blocks of row `r` of a matrix with `nb` blocks per row.
#[inline(always)]
pub(crate) fn q8_row(w: &[BlockQ8_0], nb: usize, r: usize) -> &[BlockQ8_0] {
    &w[r * nb..(r + 1) * nb]
}

/// As [`q8_row`], for Q4_0.
#[inline(always)]
pub(crate) fn q4_row(w: &[BlockQ4_0], nb: usize, r: usize) -> &[BlockQ4_0] {
    &w[r * nb..(r + 1) * nb]
}
