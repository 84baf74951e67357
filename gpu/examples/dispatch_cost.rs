//! What one compute dispatch costs on this device, apart from its work: the fact that decides
//! how far kernels must be fused (DESIGN.md, "GPU").
//!
//! ```text
//! cargo run --release -p tinystate-gpu --example dispatch_cost [-- N]
//! ```
//! Times (median of 20 submissions, wall clock from submit to the end of the wait) a pass of N
//! dispatches of a one-workgroup kernel that increments a buffer, in three arrangements:
//! - **chain**: every dispatch writes the same buffer, so each must wait for the one before
//!   (wgpu puts a barrier between them);
//! - **independent**: each dispatch writes its own buffer, so no barrier is needed;
//! - **wide chain**: the chain with 1,056 workgroups per dispatch (8 per multiprocessor on an
//!   H200), to show the cost of filling the whole GPU;
//! - **2 pipelines**: two independent chains, dispatches alternating between two pipelines.
//!
//! and the round trip of a pass with one dispatch. Per-dispatch cost = (T(N) − T(1)) / (N − 1).

use std::time::{Duration, Instant};
use tinystate_gpu::{AdapterChoice, Gpu};

const SHADER: &str = "
@group(0) @binding(0) var<storage, read_write> buf: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    buf[g.x] += 1u;
}";

fn main() {
    let n: usize = std::env::args().nth(1).map_or(200, |s| s.parse().expect("N: a number"));
    let gpu = Gpu::open(AdapterChoice::Any).unwrap_or_else(|e| {
        eprintln!("no GPU: {e}");
        std::process::exit(1);
    });
    println!("device: {}", gpu.describe());
    let dev = gpu.device();
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = || {
        dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let (pipe, pipe2) = (pipeline(), pipeline());
    let wide = 1056u32;
    let binds: Vec<wgpu::BindGroup> = (0..n)
        .map(|_| {
            let b = dev.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: u64::from(wide) * 64 * 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            dev.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.get_bind_group_layout(0),
                entries: &[wgpu::BindGroupEntry { binding: 0, resource: b.as_entire_binding() }],
            })
        })
        .collect();
    let binds2: Vec<wgpu::BindGroup> = binds
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let b = dev.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: u64::from(wide) * 64 * 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let _ = i;
            dev.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe2.get_bind_group_layout(0),
                entries: &[wgpu::BindGroupEntry { binding: 0, resource: b.as_entire_binding() }],
            })
        })
        .collect();
    // `switch`: alternate between two pipelines (each with its own bind group) on one chain.
    let time = |count: usize, distinct: bool, groups: u32, switch: bool| -> Duration {
        let mut v: Vec<Duration> = (0..23)
            .map(|_| {
                let mut enc = dev.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipe);
                    for i in 0..count {
                        if switch {
                            let odd = i % 2 == 1;
                            pass.set_pipeline(if odd { &pipe2 } else { &pipe });
                            pass.set_bind_group(0, if odd { &binds2[0] } else { &binds[0] }, &[]);
                            pass.dispatch_workgroups(groups, 1, 1);
                            continue;
                        }
                        pass.set_bind_group(0, &binds[if distinct { i } else { 0 }], &[]);
                        pass.dispatch_workgroups(groups, 1, 1);
                    }
                }
                let cmd = enc.finish();
                let t = Instant::now();
                gpu.queue().submit([cmd]);
                dev.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
                t.elapsed()
            })
            .skip(3)
            .collect();
        v.sort();
        v[v.len() / 2]
    };
    let one = time(1, false, 1, false);
    println!("round trip, one dispatch: {:.1} µs", one.as_secs_f64() * 1e6);
    let cases = [
        ("chain", false, 1, false),
        ("independent", true, 1, false),
        ("wide chain", false, wide, false),
        ("2 pipelines", false, 1, true),
    ];
    for (name, distinct, groups, switch) in cases {
        let t = time(n, distinct, groups, switch);
        let per = (t.saturating_sub(one)).as_secs_f64() * 1e6 / (n - 1) as f64;
        println!("{name:>12}: {n} dispatches {:.1} µs, {per:.2} µs per dispatch", t.as_secs_f64() * 1e6);
    }
}
