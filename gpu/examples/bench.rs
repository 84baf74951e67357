//! Decode and prefill throughput of the GPU executor on one GGUF file, as a Markdown table.
//!
//! ```text
//! cargo run --release -p tinystate-gpu --example bench -- MODEL.gguf [--batches 1,8,64,256]
//!     [--steps 64] [--runs 5] [--chunk 64]
//! ```
//! Each row times `runs` runs of `steps` calls (after warm-up) and reports the median.
//! "weights/call" counts each weight matrix once per call: the ideal a batched step reaches when
//! every weight is read from memory once for all rows (tiles re-read it from cache).

use std::time::Instant;
use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::Mamba;
use tinystate_engine::gguf::Gguf;
use tinystate_gpu::{AdapterChoice, Gpu, GpuModel, SlotId};

/// Peak read bandwidth measured on an H200 through wgpu 30 (DESIGN.md).
const PEAK_BYTES_PER_S: f64 = 4.2e12;

struct Opts {
    path: String,
    batches: Vec<u32>,
    steps: usize,
    runs: usize,
    chunk: u32,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Opts { path: String::new(), batches: vec![1, 8, 64, 256], steps: 64, runs: 5, chunk: 64 };
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--batches" => {
                o.batches = val()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--batches: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--steps" => o.steps = val()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--runs" => o.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--chunk" => o.chunk = val()?.parse().map_err(|e| format!("--chunk: {e}"))?,
            _ if o.path.is_empty() => o.path = a,
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    if o.path.is_empty() || o.batches.is_empty() || o.steps == 0 || o.runs == 0 || o.chunk == 0 {
        return Err(
            "usage: bench MODEL.gguf [--batches 1,8,64,256] [--steps N] [--runs N] [--chunk N]".into()
        );
    }
    Ok(o)
}

/// Median seconds of `runs` timings of `f`.
fn median_secs(
    runs: usize,
    mut f: impl FnMut() -> Result<(), tinystate_gpu::GpuError>,
) -> Result<f64, String> {
    f().map_err(|e| e.to_string())?; // warm-up (pipelines, first-touch)
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f().map_err(|e| e.to_string())?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn row(mode: &str, n: u32, secs_per_call: f64, tokens_per_call: f64, bytes: u64) {
    let bw = bytes as f64 / secs_per_call;
    println!(
        "| {mode} | {n} | {:.3} | {:.0} | {:.1} | {:.1} | {:.2}% |",
        secs_per_call * 1e3,
        tokens_per_call / secs_per_call,
        bytes as f64 / 1e6,
        bw / 1e9,
        100.0 * bw / PEAK_BYTES_PER_S
    );
}

fn main() -> Result<(), String> {
    let o = parse_args()?;
    let bytes = std::fs::read(&o.path).map_err(|e| format!("{}: {e}", o.path))?;
    // 8-byte aligned copy so tensors are viewed in place.
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
    let file = &bytemuck::cast_slice::<u64, u8>(&words)[..bytes.len()];
    let g = Gguf::parse(file).map_err(|e| e.to_string())?;
    let m = Mamba::load(&g).map_err(|e| e.to_string())?;
    let gpu = Gpu::open(AdapterChoice::Any).map_err(|e| e.to_string())?;
    let max_b = *o.batches.iter().max().unwrap_or(&1);
    let mut gm = GpuModel::load(&gpu, &m, max_b, max_b, o.chunk).map_err(|e| e.to_string())?;
    let v = gm.vocab();
    let c = m.config;
    println!(
        "model: {} (d_model {}, layers {}, d_inner {}, vocab {})",
        o.path, c.d_model, c.n_layer, c.d_inner, v
    );
    println!("device: {}", gpu.describe());
    println!("dispatches per call: {} (one submission)", gm.dispatches_per_call());
    println!();
    println!("| mode | B / chunk | ms per call | tokens/s | weights/call (MB) | GB/s | of 4.2 TB/s |");
    println!("|---|---|---|---|---|---|---|");
    let wb = gm.weight_bytes_per_call();
    for &b in &o.batches {
        let rows: Vec<_> = (0..b).map(|i| (SlotId(i), TokenId(i % v as u32))).collect();
        let mut out = vec![0.0; b as usize * v];
        let steps = o.steps;
        let secs = median_secs(o.runs, || (0..steps).try_for_each(|_| gm.step(&rows, &mut out)))?;
        row("decode", b, secs / steps as f64, f64::from(b), wb);
    }
    let toks: Vec<_> = (0..o.chunk).map(|i| TokenId(i % v as u32)).collect();
    let mut out = vec![0.0; v];
    let calls = o.steps.div_ceil(8);
    let secs = median_secs(o.runs, || (0..calls).try_for_each(|_| gm.prefill(SlotId(0), &toks, &mut out)))?;
    row("prefill", o.chunk, secs / calls as f64, f64::from(o.chunk), wb);
    Ok(())
}
