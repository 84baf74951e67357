//! Kernel tests: quantisers against hand-computed ggml values, and every SIMD backend against its
//! scalar twin over odd shapes.

use super::*;
use crate::tensor::GgmlType;
use half::{bf16, f16};

/// xorshift64*: a small deterministic PRNG for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn i8(&mut self) -> i8 {
        (self.next() >> 56) as u8 as i8
    }
}

/// Owned weights of one type, viewable as a [`Matrix`].
enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8(Vec<BlockQ8_0>),
    Q4(Vec<BlockQ4_0>),
}

impl Owned {
    fn random(ty: GgmlType, n: usize, rng: &mut Rng) -> Self {
        let scale = |rng: &mut Rng| f16::from_f32(0.001 + 0.1 * rng.f().abs());
        match ty {
            GgmlType::F32 => Self::F32((0..n).map(|_| rng.f()).collect()),
            GgmlType::F16 => Self::F16((0..n).map(|_| f16::from_f32(rng.f())).collect()),
            GgmlType::BF16 => Self::BF16((0..n).map(|_| bf16::from_f32(rng.f())).collect()),
            // Weights may hold -128 (ggml's quantiser never writes it, but files could).
            GgmlType::Q8_0 => Self::Q8(
                (0..n / QK)
                    .map(|_| BlockQ8_0 { d: scale(rng), qs: std::array::from_fn(|_| rng.i8()) })
                    .collect(),
            ),
            GgmlType::Q4_0 => Self::Q4(
                (0..n / QK)
                    .map(|_| BlockQ4_0 { d: scale(rng), qs: std::array::from_fn(|_| rng.i8() as u8) })
                    .collect(),
            ),
        }
    }

    fn elems(&self) -> Elems<'_> {
        match self {
            Self::F32(v) => Elems::F32(v),
            Self::F16(v) => Elems::F16(v),
            Self::BF16(v) => Elems::BF16(v),
            Self::Q8(v) => Elems::Q8_0(v),
            Self::Q4(v) => Elems::Q4_0(v),
        }
    }
}

const ALL: [GgmlType; 5] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0];

/// Σ |w|·|x| per output, the scale the float tolerance is relative to.
fn magnitude(w: &Matrix, x: &[f32], n_tok: usize) -> Vec<f32> {
    let mut wf = vec![0.0; w.rows * w.cols];
    dequantize(&w.elems, &mut wf);
    let mut m = vec![0.0; n_tok * w.rows];
    for t in 0..n_tok {
        for r in 0..w.rows {
            let (wr, xt) = (&wf[r * w.cols..(r + 1) * w.cols], &x[t * w.cols..(t + 1) * w.cols]);
            m[t * w.rows + r] = wr.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
        }
    }
    m
}

fn check_close(what: &str, got: &[f32], want: &[f32], mag: &[f32]) {
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = 1e-5 * m + 1e-30;
        assert!((g - w).abs() <= tol, "{what}: out[{i}] = {g}, scalar {w}, |diff| {} > {tol}", (g - w).abs());
    }
}

#[test]
fn q8_0_quantiser_matches_ggml_by_hand() {
    // Block 0: amax 127 -> d = 1, id = 1, q = roundf(x), half away from zero.
    let mut x = [0.0f32; 3 * QK];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.49;
    x[4] = -126.6;
    // Block 1: all zero -> d = 0, q = 0. Block 2: amax 254 -> d = 2, q = round(x / 2).
    x[2 * QK] = -254.0;
    x[2 * QK + 1] = 5.0;
    x[2 * QK + 2] = 3.0;
    let mut q = [BlockQ8_0 { d: f16::ZERO, qs: [0; QK] }; 3];
    quantize_q8_0(&x, &mut q);
    assert_eq!(q[0].d, f16::ONE);
    assert_eq!(&q[0].qs[..6], &[127, 3, -3, 0, -127, 0]);
    assert_eq!(q[1].d, f16::ZERO);
    assert_eq!(q[1].qs, [0; QK]);
    assert_eq!(q[2].d.to_f32(), 2.0);
    assert_eq!(&q[2].qs[..4], &[-127, 3, 2, 0]);
    // Dequantised: d · q.
    let mut y = [0.0; 3 * QK];
    dequantize(&Elems::Q8_0(&q), &mut y);
    assert_eq!(&y[..3], &[127.0, 3.0, -3.0]);
    assert_eq!(&y[2 * QK..2 * QK + 3], &[-254.0, 6.0, 4.0]);
    // A general block: d = amax / 127 rounded to f16.
    let x: Vec<f32> = (0..QK).map(|i| i as f32 * 0.1 - 1.0).collect();
    let mut q = [BlockQ8_0 { d: f16::ZERO, qs: [0; QK] }];
    quantize_q8_0(&x, &mut q);
    let d = 2.1f32 / 127.0;
    assert_eq!(q[0].d, f16::from_f32(d));
    assert_eq!(q[0].qs[31], 127);
    assert_eq!(q[0].qs[0], (-(1.0f32 / d)).round() as i8); // -60.47... -> -60
    assert_eq!(q[0].qs[0], -60);
}

#[test]
fn q4_0_quantiser_matches_ggml_by_hand() {
    // max = +16 (found first) -> d = -2, id = -0.5, q = min(15, trunc(x·id + 8.5)).
    let mut x = [0.0f32; QK];
    x[0] = 16.0; // -8 + 8.5 = 0.5 -> 0
    x[1] = 3.0; // -1.5 + 8.5 = 7
    x[2] = -3.0; // 1.5 + 8.5 = 10
    x[3] = 1.0; // -0.5 + 8.5 = 8
    x[16] = -16.0; // 8 + 8.5 = 16.5 -> 16 -> clamped to 15
    x[17] = 0.9; // -0.45 + 8.5 = 8.05 -> 8
    let mut q = [BlockQ4_0 { d: f16::ZERO, qs: [0; QK / 2] }];
    quantize_q4_0(&x, &mut q);
    assert_eq!(q[0].d.to_f32(), -2.0);
    // Byte j: element j low nibble, element j + 16 high nibble; zero -> 8.
    assert_eq!(q[0].qs[0], 15 << 4);
    assert_eq!(q[0].qs[1], 7 | (8 << 4));
    assert_eq!(q[0].qs[2], 10 | (8 << 4));
    assert_eq!(q[0].qs[3], 8 | (8 << 4));
    // Largest magnitude negative -> d positive.
    let mut x2 = x;
    x2[0] = -16.0;
    x2[16] = 16.0;
    quantize_q4_0(&x2, &mut q);
    assert_eq!(q[0].d.to_f32(), 2.0);
    assert_eq!(q[0].qs[0] & 0x0F, 0); // -8 + 8.5
    assert_eq!(q[0].qs[0] >> 4, 15); // 16.5 -> 15
    // Dequantised: d · (q − 8).
    let mut y = [0.0; QK];
    dequantize(&Elems::Q4_0(&q), &mut y);
    assert_eq!(y[0], -16.0);
    assert_eq!(y[16], 14.0);
    assert_eq!(y[1], 2.0 * (((3.0f32 * 0.5 + 8.5) as i32) - 8) as f32);
    // All zero -> d = 0, every nibble 8.
    quantize_q4_0(&[0.0; QK], &mut q);
    assert_eq!(q[0].d, f16::ZERO);
    assert_eq!(q[0].qs, [0x88; QK / 2]);
}

#[test]
fn dequantize_row_matches_dequantize() {
    let mut rng = Rng(7);
    for ty in ALL {
        let (rows, cols) = (5, 96);
        let w = Owned::random(ty, rows * cols, &mut rng);
        let m = Matrix { rows, cols, elems: w.elems() };
        let mut all = vec![0.0; rows * cols];
        dequantize(&m.elems, &mut all);
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            dequantize_row(&mut row, &m, r);
            assert_eq!(row, all[r * cols..(r + 1) * cols], "{ty} row {r}");
        }
    }
}

/// Every backend against scalar, over odd shapes, with unaligned f32 inputs.
#[test]
fn matmul_backends_agree_with_scalar() {
    let mut rng = Rng(42);
    let backends = Backend::available();
    let mut scratch = Scratch::new(64, 2);
    for ty in ALL {
        let col_set: &[usize] = match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 => &[32, 64, 96, 160, 800, 4096],
            _ => &[1, 7, 16, 33, 100, 800, 4096],
        };
        for &cols in col_set {
            for rows in [1, 3, 4, 5, 9, 17] {
                let n_toks: &[usize] = if cols >= 4096 { &[1, 5] } else { &[1, 2, 3, 4, 5, 6, 7, 8, 9] };
                for &n_tok in n_toks {
                    // One element of padding in front so that x and F32 weights are misaligned.
                    let xbuf: Vec<f32> = (0..n_tok * cols + 1).map(|_| rng.f()).collect();
                    let x = &xbuf[1..];
                    let w = Owned::random(ty, rows * cols + QK, &mut rng);
                    let elems = match w.elems() {
                        Elems::F32(v) => Elems::F32(&v[1..rows * cols + 1]),
                        Elems::F16(v) => Elems::F16(&v[1..rows * cols + 1]),
                        Elems::BF16(v) => Elems::BF16(&v[1..rows * cols + 1]),
                        Elems::Q8_0(v) => Elems::Q8_0(&v[1..rows * cols / QK + 1]),
                        Elems::Q4_0(v) => Elems::Q4_0(&v[1..rows * cols / QK + 1]),
                    };
                    let m = Matrix { rows, cols, elems };
                    let mut want = vec![0.0; n_tok * rows];
                    matmul_with(Backend::Scalar, &mut want, &m, x, n_tok, &mut scratch);
                    let mag = magnitude(&m, x, n_tok);
                    for &be in &backends[1..] {
                        let mut got = vec![f32::NAN; n_tok * rows];
                        matmul_with(be, &mut got, &m, x, n_tok, &mut scratch);
                        let what = format!("{be:?} {ty} rows {rows} cols {cols} n_tok {n_tok}");
                        check_close(&what, &got, &want, &mag);
                    }
                }
            }
        }
    }
}

/// With scales and activations chosen so every product and partial sum is an exact f32 integer,
/// all backends must agree bit for bit: the integer block dots are exact everywhere.
#[test]
fn quantised_dots_are_exact() {
    let mut rng = Rng(3);
    let backends = Backend::available();
    let mut scratch = Scratch::new(4096, 9);
    for cols in [32, 64, 96, 224, 4096] {
        for rows in [1, 2, 5, 7] {
            for n_tok in 1..=9 {
                // Integer activations with ±127 in each block: d_x = 1 exactly, q_x = x.
                let mut x: Vec<f32> =
                    (0..n_tok * cols).map(|_| (rng.i8() as i32).clamp(-127, 127) as f32).collect();
                for b in x.chunks_mut(QK) {
                    b[(rng.next() % 32) as usize] = if rng.next().is_multiple_of(2) { 127.0 } else { -127.0 };
                }
                // Power-of-two weight scales; small Q8 weights keep every sum below 2^24.
                let d = |rng: &mut Rng| f16::from_f32([0.5, 1.0, 2.0][(rng.next() % 3) as usize]);
                let q8: Vec<BlockQ8_0> = (0..rows * cols / QK)
                    .map(|_| BlockQ8_0 { d: d(&mut rng), qs: std::array::from_fn(|_| rng.i8() >> 4) })
                    .collect();
                let q4: Vec<BlockQ4_0> = (0..rows * cols / QK)
                    .map(|_| BlockQ4_0 { d: d(&mut rng), qs: std::array::from_fn(|_| rng.i8() as u8) })
                    .collect();
                for elems in [Elems::Q8_0(&q8), Elems::Q4_0(&q4)] {
                    let m = Matrix { rows, cols, elems };
                    let mut want = vec![0.0; n_tok * rows];
                    matmul_with(Backend::Scalar, &mut want, &m, &x, n_tok, &mut scratch);
                    for &be in &backends[1..] {
                        let mut got = vec![f32::NAN; n_tok * rows];
                        matmul_with(be, &mut got, &m, &x, n_tok, &mut scratch);
                        assert_eq!(got, want, "{be:?} {} rows {rows} cols {cols} n_tok {n_tok}", elems.ty());
                    }
                }
            }
        }
    }
}

#[test]
fn dot_f32_backends_agree() {
    let mut rng = Rng(11);
    let buf: Vec<f32> = (0..2 * 4096 + 8).map(|_| rng.f()).collect();
    for n in (0..70).chain([255, 1000, 4096]) {
        for off in [0, 1, 3] {
            let (a, b) = (&buf[off..off + n], &buf[4100 + off..4100 + off + n]);
            let want = scalar::dot_f32(a, b);
            let mag: f32 = a.iter().zip(b).map(|(a, b)| (a * b).abs()).sum();
            for be in Backend::available() {
                let got = dot_f32_with(be, a, b);
                assert!((got - want).abs() <= 1e-5 * mag + 1e-30, "{be:?} n {n}: {got} vs {want}");
            }
        }
    }
    assert_eq!(dot_f32(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
}

#[test]
fn matmul_known_values() {
    // W (2, 32) @ x (32,): row 0 all ones, row 1 = 0..32; x all 0.5.
    let w: Vec<f32> = (0..32).map(|_| 1.0).chain((0..32).map(|i| i as f32)).collect();
    let x = [0.5f32; 32];
    let m = Matrix { rows: 2, cols: 32, elems: Elems::F32(&w) };
    let mut out = [0.0; 2];
    let mut s = Scratch::new(32, 1);
    matmul(&mut out, &m, &x, 1, &mut s);
    assert_eq!(out, [16.0, 248.0]);
    // The same through Q8_0: x quantises exactly (d = 0.5/127 in f16 is inexact, so compare
    // within rounding of the scale).
    let mut q = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; QK] }; 2];
    quantize_q8_0(&w, &mut q);
    let m = Matrix { rows: 2, cols: 32, elems: Elems::Q8_0(&q) };
    matmul(&mut out, &m, &x, 1, &mut s);
    assert!((out[0] - 16.0).abs() < 0.02 && (out[1] - 248.0).abs() < 0.3, "{out:?}");
}

#[test]
#[should_panic(expected = "matmul: x is not")]
fn matmul_rejects_bad_shapes() {
    let w = [0.0f32; 64];
    let m = Matrix { rows: 2, cols: 32, elems: Elems::F32(&w) };
    matmul(&mut [0.0; 2], &m, &[0.0; 31], 1, &mut Scratch::new(32, 1));
}

#[test]
fn backend_name_is_known() {
    assert!(["avx512-vnni", "avx2-fma", "simd128", "scalar"].contains(&backend_name()));
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    assert_eq!(backend_name(), "simd128");
}

/// Rows split across a rayon pool give exactly the single-thread result.
#[cfg(feature = "threads")]
#[test]
fn threaded_matmul_matches_single_thread() {
    let mut rng = Rng(5);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let (rows, cols) = (1003, 256);
    for ty in ALL {
        let w = Owned::random(ty, rows * cols, &mut rng);
        let m = Matrix { rows, cols, elems: w.elems() };
        for n_tok in [1, 7] {
            let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
            let mut s = Scratch::new(cols, n_tok);
            let mut want = vec![0.0; n_tok * rows];
            quant_and_run_single(&mut want, &m, &x, n_tok, &mut s);
            let mut got = vec![0.0; n_tok * rows];
            pool.install(|| matmul(&mut got, &m, &x, n_tok, &mut s));
            assert_eq!(got, want, "{ty} n_tok {n_tok}");
        }
    }
}

/// [`matmul`] forced onto one thread.
#[cfg(feature = "threads")]
fn quant_and_run_single(out: &mut [f32], w: &Matrix, x: &[f32], n_tok: usize, s: &mut Scratch) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| matmul(out, w, x, n_tok, s));
}

/// Single-thread GB/s of the weight stream for matrix-vector products (release build):
/// `cargo test --release -p tinystate-engine --lib kernels::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_matvec() {
    let mut rng = Rng(1);
    println!("backend {}", backend_name());
    for (rows, cols) in [(50280, 768), (3072, 768), (768, 1536)] {
        let mut s = Scratch::new(cols, 512);
        for ty in ALL {
            let w = Owned::random(ty, rows * cols, &mut rng);
            let m = Matrix { rows, cols, elems: w.elems() };
            let bytes = ty.row_bytes(cols as u64).unwrap() as usize * rows;
            for n_tok in [1, 64] {
                let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
                let mut out = vec![0.0; n_tok * rows];
                // Best of many single calls: the host may be shared, and the fastest call is the
                // one that ran undisturbed.
                let iters = ((1e9 / (bytes as f64 * n_tok.max(8) as f64 / 8.0)) as usize).clamp(5, 400);
                matmul(&mut out, &m, &x, n_tok, &mut s);
                let mut dt = f64::INFINITY;
                for _ in 0..iters {
                    let t = std::time::Instant::now();
                    matmul(&mut out, &m, &x, n_tok, &mut s);
                    dt = dt.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{rows:>6}x{cols:<5} {ty:<5} n_tok {n_tok:>3}: {:>8.1} us  {:>6.2} GB/s  {:>7.1} GFLOP/s",
                    dt * 1e6,
                    bytes as f64 / dt / 1e9,
                    2.0 * (rows * cols * n_tok) as f64 / dt / 1e9
                );
            }
        }
    }
}

/// Core cycles per weight block (32 weights) × token on cache-resident shapes, for each backend:
/// shows kernel cost apart from memory bandwidth. Clock calibrated on a dependent imul+add chain.
#[test]
#[ignore]
fn bench_cycles() {
    let ghz = {
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let mut v = std::hint::black_box(3u64);
            for _ in 0..1_000_000 {
                v = v.wrapping_mul(v | 1); // imul 3 + or 1 = 4 cycles latency
            }
            std::hint::black_box(v);
            best = best.min(t.elapsed().as_secs_f64());
        }
        4e6 / best / 1e9
    };
    println!("backend {} ~{ghz:.2} GHz", backend_name());
    let mut rng = Rng(9);
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rows, cols) = (env("ROWS", 512), env("COLS", 768));
    for ty in ALL {
        let w = Owned::random(ty, rows * cols, &mut rng);
        let m = Matrix { rows, cols, elems: w.elems() };
        for be in Backend::available() {
            let mut line = format!("{ty:<5} {be:<8?}");
            for n_tok in [1, 4, 16, 64] {
                let x: Vec<f32> = (0..n_tok * cols).map(|_| rng.f()).collect();
                let mut out = vec![0.0; n_tok * rows];
                let mut s = Scratch::new(cols, n_tok);
                let mut dt = f64::INFINITY;
                for _ in 0..(400 / n_tok).max(20) {
                    let t = std::time::Instant::now();
                    matmul_with(be, &mut out, &m, &x, n_tok, &mut s);
                    dt = dt.min(t.elapsed().as_secs_f64());
                }
                let per = dt * ghz * 1e9 / (rows * cols / QK * n_tok) as f64;
                line += &format!("  n_tok {n_tok:>2}: {per:>6.2} cyc/blk");
            }
            println!("{line}");
        }
    }
}

#[test]
fn round_away_matches_roundf() {
    let mut rng = Rng(13);
    let specials = [0.5f32, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 126.5, -126.5, 127.0, 0.0, -0.0];
    for v in specials.into_iter().chain((0..100_000).map(|_| rng.f() * 130.0)) {
        assert_eq!(quant::round_away(v), v.round() as i32, "{v}");
    }
}

#[test]
#[ignore]
fn bench_quantize_x() {
    let mut rng = Rng(2);
    let x: Vec<f32> = (0..64 * 768).map(|_| rng.f()).collect();
    let mut qx = QuantX::default();
    for be in Backend::available() {
        let mut dt = f64::INFINITY;
        for _ in 0..200 {
            let t = std::time::Instant::now();
            quant::quantize_x(be, &x, 768, 64, 128, &mut qx);
            dt = dt.min(t.elapsed().as_secs_f64());
        }
        println!("{be:?}: {:.1} ns per block", dt * 1e9 / (64.0 * 24.0));
    }
}

/// The SIMD activation quantisers are bit-identical to the reference quantiser.
#[test]
fn quantize_x_backends_match_reference() {
    let mut rng = Rng(17);
    let cols = 256;
    let mut x: Vec<f32> = (0..4 * cols).map(|_| rng.f() * 3.0).collect();
    // Exact halves after scaling (amax 127 -> id 1), zeros, and a zero block.
    x[..8].copy_from_slice(&[127.0, 0.5, -0.5, 1.5, -2.5, 126.5, -0.0, 0.49999997]);
    x[64..96].fill(0.0);
    let mut want = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; QK] }; x.len() / QK];
    quantize_q8_0(&x, &mut want);
    for be in Backend::available() {
        let mut qx = QuantX::default();
        quant::quantize_x(be, &x, cols, 4, 128, &mut qx);
        for (b, w) in want.iter().enumerate() {
            assert_eq!(qx.d[b], w.d.to_f32(), "{be:?} block {b} scale");
            assert_eq!(&qx.qs[b * QK..(b + 1) * QK], &w.qs, "{be:?} block {b}");
        }
        if be == Backend::Avx512 {
            for (c, q) in qx.corr.iter().zip(qx.qs.chunks_exact(4)) {
                assert_eq!(*c, -128 * q.iter().map(|&v| v as i32).sum::<i32>());
            }
        }
    }
}
