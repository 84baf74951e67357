//! Decode and prefill throughput of the GPU executor on one GGUF file, as a Markdown table.
//!
//! ```text
//! cargo run --release -p tinystate-gpu --example bench -- MODEL.gguf [--batches 1,8,64,256]
//!     [--steps 64] [--runs 5] [--chunk 64] [--breakdown] [--greedy] [--vary] [--no-tensor-cores]
//!     [--pipelined] [--no-fused]
//! ```
//! Each row times `runs` runs of `steps` calls (after warm-up) and reports the median.
//! `--greedy`: rows and prefill chunks want no logits, so a call reads back only each row's
//! greedy token (4 bytes) instead of its logits (vocab × 4 bytes), as greedy requests do.
//! `--vary`: every other decode call has one row fewer (B−1), as a batcher's steps change size
//! from step to step (the pass recorded ahead then serves any size, see `GpuModel::launch`).
//! `--pipelined` adds a row per batch size whose calls go in before the last is read back, each
//! row fed its greedy token on the GPU (`Feed::Greedy`), as the batcher runs greedy runs.
//! `--breakdown` then reruns each row's calls once more with profiling on and prints, per row,
//! the mean CPU time of each phase of a call (token table write, recording, submit, wait + map,
//! logits copy) and, where the device has timestamp queries inside passes, the mean GPU time per
//! kernel kind. `--no-tensor-cores` keeps the f32 GEMMs on a device that has the tensor-core
//! ones (to compare them); the device line says which ran and lists the adapter's cooperative
//! matrix configurations. `--no-fused` runs one-row calls through the dispatch plan instead of
//! the fused step (every layer in one dispatch, `GpuModel::set_fused`), which hardware adapters
//! take by default; the line after the device says which ran.
//! "weights/call" counts each weight matrix once per call: the ideal a batched step reaches when
//! every weight is read from memory once for all rows (tiles re-read it from cache).

use std::time::Instant;
use tinystate_engine::TokenId;
use tinystate_engine::arch::mamba::Mamba;
use tinystate_engine::gguf::Gguf;
use tinystate_gpu::{AdapterChoice, CallProfile, Feed, Gpu, GpuError, GpuModel, SlotId, StepRow};

/// Peak read bandwidth measured on an H200 through wgpu 30 (DESIGN.md).
const PEAK_BYTES_PER_S: f64 = 4.2e12;

struct Opts {
    path: String,
    batches: Vec<u32>,
    steps: usize,
    runs: usize,
    chunk: u32,
    breakdown: bool,
    greedy: bool,
    vary: bool,
    tensor_cores: bool,
    pipelined: bool,
    fused: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Opts {
        path: String::new(),
        batches: vec![1, 8, 64, 256],
        steps: 64,
        runs: 5,
        chunk: 64,
        breakdown: false,
        greedy: false,
        vary: false,
        tensor_cores: true,
        pipelined: false,
        fused: true,
    };
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
            "--breakdown" => o.breakdown = true,
            "--greedy" => o.greedy = true,
            "--vary" => o.vary = true,
            "--no-tensor-cores" => o.tensor_cores = false,
            "--pipelined" => o.pipelined = true,
            "--no-fused" => o.fused = false,
            _ if o.path.is_empty() => o.path = a,
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    if o.path.is_empty() || o.batches.is_empty() || o.steps == 0 || o.runs == 0 || o.chunk == 0 {
        return Err(
            "usage: bench MODEL.gguf [--batches 1,8,64,256] [--steps N] [--runs N] [--chunk N] [--breakdown] \
             [--greedy] [--vary] [--no-tensor-cores] [--pipelined] [--no-fused]"
                .into(),
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

/// Mean profile of `calls` calls of `f` with profiling on, as one line for row `what`.
fn breakdown(
    gm: &mut GpuModel,
    what: &str,
    calls: usize,
    mut f: impl FnMut(&mut GpuModel) -> Result<(), GpuError>,
) -> Result<String, String> {
    let gpu_timed = gm.set_profiling(true);
    let mut sum = CallProfile::default();
    let mut gpu: Vec<(&'static str, f64)> = Vec::new();
    for _ in 0..calls {
        f(gm).map_err(|e| e.to_string())?;
        let p = gm.last_profile();
        sum.write += p.write;
        sum.record += p.record;
        sum.submit += p.submit;
        sum.wait += p.wait;
        sum.copy += p.copy;
        for &(k, ns) in &p.gpu_ns {
            match gpu.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => *v += ns,
                None => gpu.push((k, ns)),
            }
        }
    }
    gm.set_profiling(false);
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / calls as f64;
    let mut line = format!(
        "{what}: CPU µs per call: write {:.0}, record {:.0}, submit {:.0}, wait+map {:.0}, copy {:.0}",
        us(sum.write),
        us(sum.record),
        us(sum.submit),
        us(sum.wait),
        us(sum.copy)
    );
    if gpu_timed {
        let total: f64 = gpu.iter().map(|(_, ns)| ns).sum::<f64>() / calls as f64 / 1e3;
        line += &format!("; GPU µs per call: {total:.0} =");
        for (k, ns) in &gpu {
            line += &format!(" {k} {:.0},", ns / calls as f64 / 1e3);
        }
        line.pop();
    } else {
        line += "; GPU: no timestamp queries inside passes on this device";
    }
    Ok(line)
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
    let mut gpu = Gpu::open(AdapterChoice::Any).map_err(|e| e.to_string())?;
    gpu.set_tensor_cores(o.tensor_cores);
    let max_b = *o.batches.iter().max().unwrap_or(&1);
    let mut gm = GpuModel::load(&gpu, &m, max_b, max_b, o.chunk).map_err(|e| e.to_string())?;
    if !o.fused {
        gm.set_fused(false);
    }
    let v = gm.vocab();
    let c = m.config;
    println!(
        "model: {} (d_model {}, layers {}, d_inner {}, vocab {})",
        o.path, c.d_model, c.n_layer, c.d_inner, v
    );
    println!("device: {}", gpu.describe());
    let coop: Vec<String> = gpu
        .cooperative_matrix_properties()
        .iter()
        .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
        .collect();
    println!("cooperative matrices: [{}]", coop.join(", "));
    let read_back = if o.greedy { "the greedy token only (--greedy)" } else { "every row's logits" };
    println!("read back per row: {read_back}");
    println!(
        "dispatches per call: {} at B=1, {} at B={max_b}, {} for a {}-token prefill (one submission)",
        gm.dispatches_per_call(),
        gm.dispatches_for(max_b, max_b),
        gm.dispatches_for(o.chunk, 1),
        o.chunk
    );
    match gm.fused_workgroups() {
        Some(p) => println!("one-row calls: the fused step, one dispatch of {p} workgroups"),
        None => println!("one-row calls: the plan (no fused step)"),
    }
    println!();
    println!("| mode | B / chunk | ms per call | tokens/s | weights/call (MB) | GB/s | of 4.2 TB/s |");
    println!("|---|---|---|---|---|---|---|");
    let wb = gm.weight_bytes_per_call();
    let mut lines = Vec::new();
    let logits = !o.greedy;
    for &b in &o.batches {
        let rows: Vec<_> = (0..b)
            .map(|i| StepRow { slot: SlotId(i), token: TokenId(i % v as u32).into(), logits })
            .collect();
        let mut ids = vec![TokenId(0); b as usize];
        let mut out = vec![0.0; if logits { b as usize * v } else { 0 }];
        let steps = o.steps;
        // With --vary every other call drops the last row, as a batcher's steps change size.
        let mut k = 0usize;
        let vary = o.vary && b > 1;
        let mut step = |gm: &mut GpuModel| {
            k += 1;
            let n = if vary && k % 2 == 1 { rows.len() - 1 } else { rows.len() };
            let wanted = if logits { n * v } else { 0 };
            gm.step(&rows[..n], &mut ids[..n], &mut out[..wanted])
        };
        let secs = median_secs(o.runs, || (0..steps).try_for_each(|_| step(&mut gm)))?;
        row("decode", b, secs / steps as f64, f64::from(b), wb);
        if o.pipelined {
            // Each call goes in before the last is read back, every row fed its own greedy
            // token on the GPU (Feed::Greedy), as the batcher runs greedy runs.
            let fed: Vec<_> =
                (0..b).map(|i| StepRow { slot: SlotId(i), token: Feed::Greedy(i), logits: false }).collect();
            let first: Vec<_> = rows.iter().map(|r| StepRow { logits: false, ..*r }).collect();
            let mut ids = vec![TokenId(0); b as usize];
            let secs = median_secs(o.runs, || {
                gm.submit(None, &first)?;
                for _ in 1..steps {
                    gm.submit(None, &fed)?;
                    gm.finish(&mut ids, &mut [])?;
                }
                gm.finish(&mut ids, &mut [])
            })?;
            row("decode, pipelined", b, secs / steps as f64, f64::from(b), wb);
        }
        if o.breakdown {
            lines.push(breakdown(&mut gm, &format!("decode B={b}"), steps, &mut step)?);
            step(&mut gm).map_err(|e| e.to_string())?;
            let t = gm.kernel_times(b, 50).map_err(|e| e.to_string())?;
            let whole = t.whole;
            let each: Vec<String> = t.each.iter().map(|(k, us)| format!("{k} {us:.1}")).collect();
            lines.push(format!(
                "decode B={b}, replayed 50× in one pass: µs per dispatch: {}; whole plan {whole:.0} µs per call",
                each.join(", ")
            ));
        }
    }
    let toks: Vec<_> = (0..o.chunk).map(|i| TokenId(i % v as u32)).collect();
    let mut out = vec![0.0; v];
    let calls = o.steps.div_ceil(8);
    let mut prefill = |gm: &mut GpuModel| {
        let out = logits.then_some(&mut out[..]);
        gm.prefill(SlotId(0), &toks, out).map(|_| ())
    };
    let secs = median_secs(o.runs, || (0..calls).try_for_each(|_| prefill(&mut gm)))?;
    row("prefill", o.chunk, secs / calls as f64, f64::from(o.chunk), wb);
    if o.breakdown {
        let what = format!("prefill {}", o.chunk);
        lines.push(breakdown(&mut gm, &what, calls, &mut prefill)?);
        println!();
        lines.iter().for_each(|l| println!("{l}"));
    }
    Ok(())
}
