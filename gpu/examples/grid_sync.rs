//! What a grid-wide barrier costs inside one persistent dispatch, and whether data written
//! before it is seen after it by every other workgroup: the facts that decide whether a
//! single-stream step can run as one dispatch (DESIGN.md, "GPU").
//!
//! ```text
//! cargo run --release -p tinystate-gpu --example grid_sync [-- WORKGROUPS,…]
//! ```
//! One dispatch of W workgroups (256 threads) runs P phases; between phases every workgroup
//! bumps one atomic counter and waits for it to reach W × (phase + 1). All workgroups must be
//! resident at once, so W stays at or below what the device holds. Modes:
//! - **barrier**: each phase writes 256 words per workgroup and, after the barrier, checks the
//!   next workgroup's words (a stale read counts as an error); again with the words' buffer
//!   declared `@coherent` (its loads skip the multiprocessor's L1);
//! - **matvec + barrier**: each phase is a 3,072 × 768 f16 matrix × vector (an in_proj of
//!   Mamba-130m), cycling over 24 such matrices (113 MB, more than L2), rows shared out by
//!   subgroup, then the barrier;
//! - **matvec only**: the same phases without barriers (what the barriers cost on top).
//!
//! Per phase = (T(P) − T(1)) / (P − 1), medians of 7 submissions.

use std::time::{Duration, Instant};
use tinystate_gpu::{AdapterChoice, Gpu};

const SHADER: &str = "
override N: u32 = 132u;
override PHASES: u32 = 1u;
override MODE: u32 = 0u;
const LAYERS: u32 = 24u;
const ROWS: u32 = 3072u;
const G: u32 = 96u;

@group(0) @binding(0) var<storage, read_write> sync: array<atomic<u32>, 4>;
COHERENT@group(0) @binding(1) var<storage, read_write> data: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> xv: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn grid_sync(k: u32, lid: u32) {
    storageBarrier();
    if lid == 0u {
        atomicAdd(&sync[0], 1u);
        let goal = N * (k + 1u);
        loop {
            if atomicLoad(&sync[0]) >= goal { break; }
        }
    }
    storageBarrier();
}

fn dot8(q: vec4<u32>, g: u32) -> f32 {
    let a = xv[2u * g];
    let b = xv[2u * g + 1u];
    let s = vec4(unpack2x16float(q.x), unpack2x16float(q.y)) * a
          + vec4(unpack2x16float(q.z), unpack2x16float(q.w)) * b;
    return s.x + s.y + s.z + s.w;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_id) sg: u32) {
    var errs = 0u;
    for (var k = 0u; k < PHASES; k++) {
        let half = (k % 2u) * N * 256u;
        if MODE == 0u {
            data[half + wg.x * 256u + lid] = k;
        } else {
            let layer = k % LAYERS;
            for (var r = wg.x * 8u + sg; r < ROWS; r += N * 8u) {
                let base = (layer * ROWS + r) * G;
                let q0 = w[base + lane];
                let q1 = w[base + lane + 32u];
                let q2 = w[base + lane + 64u];
                var acc = dot8(q0, lane) + dot8(q1, lane + 32u) + dot8(q2, lane + 64u);
                acc = subgroupAdd(acc);
                if lane == 0u { out[r] = acc + f32(k); }
            }
        }
        if MODE != 2u { grid_sync(k, lid); }
        if MODE == 0u {
            let other = (wg.x + 1u) % N;
            if data[half + other * 256u + lid] != k { errs += 1u; }
        }
    }
    if errs > 0u { atomicAdd(&sync[1], errs); }
}";

fn main() {
    let list = std::env::args().nth(1).unwrap_or_else(|| "66,132,264".into());
    let sizes: Vec<u32> = list.split(',').map(|s| s.parse().expect("workgroups: numbers")).collect();
    let gpu = Gpu::open(AdapterChoice::Any).unwrap_or_else(|e| {
        eprintln!("no GPU: {e}");
        std::process::exit(1);
    });
    println!("device: {}", gpu.describe());
    let dev = gpu.device();
    let module = |coherent: bool| {
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let src = SHADER.replace("COHERENT", if coherent { "@coherent " } else { "" });
        let m = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            eprintln!("shader: {e}");
            std::process::exit(1);
        }
        m
    };
    let modules = [module(false), module(true)];
    let buf = |size: u64, usage: wgpu::BufferUsages| {
        dev.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false })
    };
    let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let sync = buf(16, rw);
    let data = buf(2 * 1024 * 256 * 4, rw);
    let w_bytes = 24 * 3072 * 96 * 16u64;
    let w = buf(w_bytes, rw);
    // Non-zero weights: a GPU may compress all-zero pages.
    let pattern: Vec<u8> = (0..1u32 << 20)
        .flat_map(|i| (0x3c00 ^ (i.wrapping_mul(2_654_435_761) >> 20) as u16).to_le_bytes())
        .collect();
    for off in (0..w_bytes).step_by(pattern.len()) {
        let n = (w_bytes - off).min(pattern.len() as u64) as usize;
        gpu.queue().write_buffer(&w, off, &pattern[..n]);
    }
    let xv = buf(768 * 4, rw);
    gpu.queue().write_buffer(&xv, 0, bytemuck::cast_slice(&vec![0.5f32; 768]));
    let out = buf(3072 * 4, rw);
    let readback = buf(16, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
    let run = |n: u32, phases: u32, mode: u32, coherent: bool| -> (Duration, u32) {
        let module = &modules[usize::from(coherent)];
        let constants = [("N", f64::from(n)), ("PHASES", f64::from(phases)), ("MODE", f64::from(mode))];
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                ..Default::default()
            },
            cache: None,
        });
        let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: sync.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: data.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: w.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: xv.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: out.as_entire_binding() },
            ],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            eprintln!("pipeline: {e}");
            std::process::exit(1);
        }
        let mut times = Vec::new();
        let mut errors = 0;
        for _ in 0..9 {
            let mut enc = dev.create_command_encoder(&Default::default());
            enc.clear_buffer(&sync, 0, None);
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipe);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(n, 1, 1);
            }
            enc.copy_buffer_to_buffer(&sync, 0, &readback, 0, 16);
            let cmd = enc.finish();
            let t = Instant::now();
            gpu.queue().submit([cmd]);
            dev.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            times.push(t.elapsed());
            readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            dev.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            let words: Vec<u32> =
                bytemuck::cast_slice::<u8, u32>(&readback.slice(..).get_mapped_range().expect("mapped"))
                    .to_vec();
            readback.unmap();
            errors += words[1];
        }
        times.drain(..2);
        times.sort();
        (times[times.len() / 2], errors)
    };
    let phases = 2001;
    for &n in &sizes {
        let modes = [
            (0, false, "barrier"),
            (0, true, "barrier, @coherent"),
            (1, false, "matvec + barrier"),
            (2, false, "matvec only"),
        ];
        for (mode, coherent, name) in modes {
            let (t1, _) = run(n, 1, mode, coherent);
            let (tp, errors) = run(n, phases, mode, coherent);
            let per = tp.saturating_sub(t1).as_secs_f64() * 1e6 / f64::from(phases - 1);
            println!(
                "{n:>5} workgroups, {name:>18}: {per:.2} µs per phase ({:.0} µs for {phases}), stale reads {errors}",
                tp.as_secs_f64() * 1e6
            );
        }
    }
}
