//! Element-wise operations shared by the architectures: normalisation, activations, and the
//! selective-scan recurrence. Output-first functions on slices; each has its math in one line.
//!
//! `exp` here is a polynomial built only from `+`, `*` and bit operations, so the loops that use
//! it vectorise and give the same bits on every platform (no libm call).

/// out = x / sqrt(mean(x²) + eps) · w   (RMSNorm; Zhang & Sennrich 2019)
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    debug_assert!(out.len() == x.len() && x.len() == w.len());
    let scale = rms_scale(x, eps);
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// x ← x / sqrt(mean(x²) + eps)   (RMSNorm without a weight, Falcon-Mamba's dt/B/C norm)
pub fn rmsnorm_in_place(x: &mut [f32], eps: f32) {
    let scale = rms_scale(x, eps);
    x.iter_mut().for_each(|v| *v *= scale);
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    // Accumulate in f64: the sum of squares of a few thousand activations loses bits in f32.
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (1.0 / ((ss / x.len() as f64) + eps as f64).sqrt()) as f32
}

/// silu(x) = x · σ(x) = x / (1 + e^(−x))
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// softplus(x) = ln(1 + e^x), and x itself above 20 (as PyTorch and ggml do).
///
/// Computed as max(x, 0) + ln(1 + e^(−|x|)), which never overflows, with the polynomial
/// [`exp`] and [`ln_1_to_2`] so that loops over it vectorise.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let sp = x.max(0.0) + ln_1_to_2(1.0 + exp(-x.abs()));
    if x > 20.0 { x } else { sp }
}

/// ln(y) for y in \[1, 2\], relative error below 2e-7 (absolute below 1e-7).
///
/// y = 2^e · m with m in \[√½, √2), then ln m = 2·atanh(s) with s = (m − 1)/(m + 1), |s| ≤ 0.172,
/// summed to s⁹ (the next term is below 4e-10).
#[inline(always)]
pub fn ln_1_to_2(y: f32) -> f32 {
    // For y in [1, 2]: e = 1 when y ≥ √2 (then m = y/2), else 0.
    let big = y >= std::f32::consts::SQRT_2;
    let m = if big { y * 0.5 } else { y };
    let e = if big { std::f32::consts::LN_2 } else { 0.0 };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = 1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    e + 2.0 * s * p
}

/// e^x with relative error below 3e-7 for x in \[−87.3, 88\]; inputs outside are clamped to it
/// (so tiny results flush to e^−87.3 ≈ 1.2e−38 and huge ones saturate at e^88 ≈ 1.7e38).
///
/// Cody–Waite reduction x = k·ln2 + r, |r| ≤ ln2/2, then a degree-7 polynomial for e^r and
/// 2^k built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.0);
    // Round to nearest (ties to even) by adding and removing 1.5·2^23: plain IEEE additions,
    // so it vectorises even without SSE4.1's roundps and gives the same bits everywhere.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let k = shifted - MAGIC;
    // The low mantissa bits of `shifted` hold k as an integer: reading them avoids a float→int
    // cast, whose NaN/saturation handling would keep the loop scalar.
    let ki = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor coefficients 1/n! to degree 7, Horner form.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_7e-1
                    + r * (4.166_666_8e-2 + r * (8.333_334e-3 + r * (1.388_889e-3 + r * 1.984_127e-4))))));
    let bits = ((ki + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Causal depthwise conv over the last K inputs of each channel, for one new input row.
///
/// `window` (K−1, D) holds the previous inputs, oldest first; `w` (D, K) the taps; `b` (D,).
/// out\[d\] = b\[d\] + Σ_k w\[d,k\] · [window; x]\[k,d\]; then the window shifts by one.
pub fn conv_step(out: &mut [f32], window: &mut [f32], x: &[f32], w: &[f32], b: &[f32]) {
    let d = x.len();
    let k = w.len() / d;
    debug_assert!(window.len() == (k - 1) * d && out.len() == d && b.len() == d);
    out.copy_from_slice(b);
    for j in 0..k - 1 {
        let row = &window[j * d..(j + 1) * d];
        for (c, o) in out.iter_mut().enumerate() {
            *o += w[c * k + j] * row[c];
        }
    }
    for (c, o) in out.iter_mut().enumerate() {
        *o += w[c * k + k - 1] * x[c];
    }
    if k > 1 {
        window.copy_within(d.., 0);
        window[(k - 2) * d..].copy_from_slice(x);
    }
}

/// The read-only inputs of one selective-scan step for one token.
/// Shapes: a (D, N); x, dt, d_skip (D,); b, c (N,).
#[derive(Clone, Copy)]
pub struct ScanInputs<'a> {
    /// Conv + SiLU output u (D,).
    pub x: &'a [f32],
    /// Δ (D,).
    pub dt: &'a [f32],
    /// A = −exp(A_log) (D, N).
    pub a: &'a [f32],
    /// B (N,).
    pub b: &'a [f32],
    /// C (N,).
    pub c: &'a [f32],
    /// Skip connection D (D,).
    pub d_skip: &'a [f32],
}

/// One step of the selective scan (Mamba, Gu & Dao 2023, Eqn 2a/2b with ZOH on A, Euler on B):
/// h\[d,n\] ← e^(Δ\[d\]·A\[d,n\]) · h\[d,n\] + Δ\[d\] · B\[n\] · x\[d\];
/// y\[d\] = Σ_n h\[d,n\] · C\[n\] + D\[d\] · x\[d\]
///
/// Shapes: h (D, N); y (D,).
pub fn selective_scan_step(y: &mut [f32], h: &mut [f32], inp: &ScanInputs<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512(y: &mut [f32], h: &mut [f32], inp: &ScanInputs<'_>) {
            scan_generic(y, h, inp)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(y: &mut [f32], h: &mut [f32], inp: &ScanInputs<'_>) {
            scan_generic(y, h, inp)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (and so AVX2 and FMA), checked just above.
            return unsafe { avx512(y, h, inp) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(y, h, inp) };
        }
    }
    scan_generic(y, h, inp)
}

#[inline(always)]
fn scan_generic(y: &mut [f32], h: &mut [f32], inp: &ScanInputs<'_>) {
    // d_state 16 is what every released Mamba uses: a fixed width lets the compiler keep one
    // channel's whole state in registers.
    if let (Ok(b16), Ok(c16)) = (<&[f32; 16]>::try_from(inp.b), <&[f32; 16]>::try_from(inp.c)) {
        return scan_fixed::<16>(y, h, inp, b16, c16);
    }
    let n = inp.b.len();
    for (((((yi, hi), &xi), &dti), ai), &di) in y
        .iter_mut()
        .zip(h.chunks_exact_mut(n))
        .zip(inp.x)
        .zip(inp.dt)
        .zip(inp.a.chunks_exact(n))
        .zip(inp.d_skip)
    {
        let dtx = dti * xi;
        // Two passes so each vectorises: the state update has no loop-carried dependency, and
        // the readout sums into LANES partial sums (a plain `acc +=` chain would not vectorise
        // without reassociation, which Rust never does on its own).
        for ((hj, &aj), &bj) in hi.iter_mut().zip(ai).zip(inp.b) {
            *hj = *hj * exp(dti * aj) + dtx * bj;
        }
        *yi = dot_lanes(hi, inp.c) + di * xi;
    }
}

/// [`scan_generic`] for a state width known at compile time.
#[inline(always)]
fn scan_fixed<const N: usize>(
    y: &mut [f32],
    h: &mut [f32],
    inp: &ScanInputs<'_>,
    b: &[f32; N],
    c: &[f32; N],
) {
    let (hs, as_) = (h.chunks_exact_mut(N), inp.a.chunks_exact(N));
    for (((((yi, hi), &xi), &dti), ai), &di) in
        y.iter_mut().zip(hs).zip(inp.x).zip(inp.dt).zip(as_).zip(inp.d_skip)
    {
        let dtx = dti * xi;
        let mut hv = [0.0f32; N];
        for j in 0..N {
            hv[j] = hi[j] * exp(dti * ai[j]) + dtx * b[j];
        }
        hi.copy_from_slice(&hv);
        *yi = dot_lanes(&hv, c) + di * xi;
    }
}

/// Σ a\[i\]·b\[i\] with 8 interleaved partial sums (vectorises; fixed order on every target).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += xa[k] * xb[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_2e7_relative() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, std {want}");
            x += 0.0137;
        }
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(-200.0) < 1e-37);
    }

    #[test]
    fn ln_1_to_2_matches_std() {
        let mut y = 1.0f32;
        while y <= 2.0 {
            let (got, want) = (ln_1_to_2(y), (y as f64).ln());
            assert!((got as f64 - want).abs() <= 1e-7 + 2e-7 * want, "ln({y}) = {got}, want {want}");
            y += 1.0 / 4096.0;
        }
    }

    #[test]
    fn softplus_and_silu_match_definitions() {
        for &v in &[-90.0f32, -30.0, -3.0, -0.5, -1e-3, 0.0, 1e-3, 0.7, 5.0, 19.9, 20.1, 50.0] {
            let sp = if v > 20.0 { v } else { (v as f64).exp().ln_1p() as f32 };
            assert!((softplus(v) - sp).abs() <= 1e-6 * sp.abs().max(1.0), "softplus({v})");
            let si = (v as f64 / (1.0 + (-v as f64).exp())) as f32;
            assert!((silu(v) - si).abs() <= 1e-6 * si.abs().max(1.0), "silu({v})");
        }
    }

    #[test]
    fn rmsnorm_normalises_to_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 5.0];
        let mut out = [0.0; 4];
        rmsnorm(&mut out, &x, &[1.0, 2.0, 1.0, 1.0], 0.0);
        let rms = ((9.0 + 16.0 + 25.0) / 4.0f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] - 2.0 * -4.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn conv_step_is_a_causal_convolution() {
        // D = 2 channels, K = 3 taps; feed 4 inputs and compare with the direct sum.
        let w = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.25];
        let b = [0.1f32, -0.2];
        let inputs = [[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
        let mut window = [0.0f32; 4];
        let mut out = [0.0f32; 2];
        for (t, x) in inputs.iter().enumerate() {
            conv_step(&mut out, &mut window, x, &w, &b);
            for d in 0..2 {
                let mut want = b[d];
                for k in 0..3 {
                    // tap k sees input t − (2 − k)
                    if let Some(src) = (t + k).checked_sub(2) {
                        want += w[d * 3 + k] * inputs[src][d];
                    }
                }
                assert!((out[d] - want).abs() < 1e-6, "t={t} d={d}: {} vs {want}", out[d]);
            }
        }
    }

    #[test]
    fn scan_step_matches_the_recurrence() {
        let (dim, n) = (3, 4);
        let a: Vec<f32> = (0..dim * n).map(|i| -0.1 * (i as f32 + 1.0)).collect();
        let mut h: Vec<f32> = (0..dim * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let h0 = h.clone();
        let (x, dt, dsk) = ([0.5f32, -1.0, 2.0], [0.1f32, 0.5, 1.5], [1.0f32, 0.5, -0.5]);
        let (b, c) = ([1.0f32, 0.0, -1.0, 0.5], [0.2f32, 0.3, 0.4, -0.5]);
        let mut y = [0.0f32; 3];
        selective_scan_step(
            &mut y,
            &mut h,
            &ScanInputs { x: &x, dt: &dt, a: &a, b: &b, c: &c, d_skip: &dsk },
        );
        for d in 0..dim {
            let mut acc = 0.0f64;
            for j in 0..n {
                let s = h0[d * n + j] as f64 * ((dt[d] * a[d * n + j]) as f64).exp()
                    + (dt[d] * x[d] * b[j]) as f64;
                assert!((h[d * n + j] as f64 - s).abs() < 1e-6);
                acc += s * c[j] as f64;
            }
            let want = acc + (dsk[d] * x[d]) as f64;
            assert!((y[d] as f64 - want).abs() < 1e-5, "y[{d}]");
        }
    }
}
