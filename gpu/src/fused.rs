//! The decode step of a single sequence as one persistent dispatch (`shaders/fused_step.wgsl`):
//! embed and every layer, with grid-wide barriers between phases instead of dispatch
//! boundaries; the plan's LM head and argmax follow (see the shader). A single stream otherwise
//! pays one boundary per kernel, about 100 a token for Mamba-130m.
//!
//! The kernel indexes every layer's matrices in one binding, so it reads each kind (in_proj,
//! x_proj, dt_proj, out_proj) as one buffer with its layers stacked: the plan's own buffer when
//! the plan could stack them (each layer's slice aligned for a binding offset), else a copy
//! uploaded here ([`LayerWeights`]). The embedding is the plan's. All P workgroups must be
//! resident at once; the kernel gives up after [`SPIN`] polls of a barrier, and the call then
//! fails instead of hanging (see [`FusedStep::record`]).

use crate::kernels::{ACTIVATIONS, compile};
use crate::weights::{Format, Packed};
use tinystate_engine::arch::mamba::Config;
use wgpu::util::DeviceExt;

/// Polls of a grid barrier before the kernel gives up (far above any real wait: a barrier takes
/// about 2 µs of polls on an H200).
const SPIN: u32 = 1 << 20;
/// Threads per workgroup (the shader's WGS). 512 and 1024 measured 2–3× slower on an H200.
const WGS: u32 = 256;

/// How the step is split: P workgroups of WGS threads, each owning CPW channels of d_inner,
/// handled CH at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    /// Threads per workgroup.
    pub wgs: u32,
    /// Workgroups.
    pub groups: u32,
    /// Channels per workgroup.
    pub cpw: u32,
    /// Channels per chunk (CH · d_state ≤ WGS threads for the scan).
    pub ch: u32,
}

impl Split {
    /// `cpw` channels per workgroup (d_inner / cpw workgroups), or None when the shapes do not
    /// fit the kernel.
    pub(crate) fn new(c: &Config, cpw: u32, wgs: u32) -> Option<Split> {
        let e = c.d_inner as u32;
        let ns = c.d_state as u32;
        let bad_wgs = !wgs.is_power_of_two() || !(64..=1024).contains(&wgs);
        if bad_wgs || cpw == 0 || !cpw.is_multiple_of(4) || !e.is_multiple_of(cpw) || ns == 0 || ns > wgs {
            return None;
        }
        let ch = (1..=cpw.min(wgs / ns)).rev().find(|d| cpw.is_multiple_of(*d))?;
        let groups = e / cpw;
        (groups <= wgs).then_some(Split { wgs, groups, cpw, ch })
    }

    /// One workgroup on a CPU adapter (it may not run several at once), else d_state · CPW =
    /// WGS: each workgroup's scan takes every thread once (Mamba-130m: 16 channels, 96
    /// workgroups; 8, 12 and 24 channels measured 1.6–2× slower on an H200, BENCHMARKS.md).
    pub(crate) fn for_device(c: &Config, software: bool) -> Option<Split> {
        if software {
            return Split::new(c, c.d_inner as u32, WGS);
        }
        let cpw = (WGS / c.d_state.max(1) as u32).max(4);
        Split::new(c, cpw, WGS).or_else(|| (4..=64).step_by(4).find_map(|k| Split::new(c, k, WGS)))
    }
}

/// The fused step of one model: its pipeline, bindings (what crosses workgroups, `xch`, lives in
/// the bind group) and barrier buffer.
pub(crate) struct FusedStep {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    /// The barrier counter (word 0) and the abandon flag (word 1).
    sync: wgpu::Buffer,
    split: Split,
}

/// A matrix on the GPU as the shader's loaders read it: one matrix, or every layer's rows
/// stacked (layer l's row r is row l · rows + r).
pub(crate) struct Stacked {
    /// Storage format.
    pub format: Format,
    /// Values or quants.
    pub data: wgpu::Buffer,
    /// f16 block scales (quantised formats).
    pub scales: Option<wgpu::Buffer>,
}

/// One kind of layer matrix for the fused step: the plan's stacked buffers, or, where the plan
/// keeps a buffer per layer, the stack packed in host memory, which the step uploads.
pub(crate) enum LayerWeights {
    /// The plan's buffers, every layer's rows stacked.
    Shared(Stacked),
    /// Every layer's rows stacked (`weights::stack`), not uploaded yet.
    Packed(Packed),
}

impl LayerWeights {
    /// The stacked buffers, uploading them first if they are not on the GPU yet.
    fn upload(self, dev: &wgpu::Device) -> Result<Stacked, String> {
        let p = match self {
            LayerWeights::Shared(s) => return Ok(s),
            LayerWeights::Packed(p) => p,
        };
        let lim = dev.limits();
        let limit = lim.max_storage_buffer_binding_size.min(lim.max_buffer_size);
        if p.data.len() as u64 > limit {
            return Err(format!(
                "a stacked matrix ({} bytes) exceeds the binding limit {limit}",
                p.data.len()
            ));
        }
        let init = |bytes: &[u8]| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("fused stacked weights"),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        Ok(Stacked { format: p.format, data: init(&p.data), scales: p.scales.as_deref().map(init) })
    }
}

/// The buffers of [`crate::GpuModel`] the fused step reads and writes.
pub(crate) struct Shared<'a> {
    pub smalls: &'a wgpu::Buffer,
    pub meta: &'a wgpu::Buffer,
    pub argmax: &'a wgpu::Buffer,
    pub conv: &'a wgpu::Buffer,
    pub ssm: &'a wgpu::Buffer,
    /// The hidden states, where the step leaves the final h for the plan's LM head.
    pub x: &'a wgpu::Buffer,
}

/// Offsets (floats) of layer 0's small vectors in `smalls` and the stride from one layer to the
/// next.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SmallsLayout {
    pub attn_norm: u32,
    pub conv_w: u32,
    pub conv_b: u32,
    pub dt_bias: u32,
    pub a: u32,
    pub d: u32,
    pub stride: u32,
}

impl FusedStep {
    /// Builds the step for a model of config `c`, or Err with the reason when this device or
    /// model cannot run it: shapes the kernel does not take, or limits it exceeds.
    pub(crate) fn new(
        dev: &wgpu::Device,
        subgroups32: bool,
        split: Split,
        c: &Config,
        smalls: SmallsLayout,
        shared: Shared<'_>,
        (layers, emb): ([LayerWeights; 4], Stacked),
    ) -> Result<FusedStep, String> {
        let (d, e) = (c.d_model as u32, c.d_inner as u32);
        if !d.is_multiple_of(4) || !e.is_multiple_of(4) || c.d_conv < 2 {
            return Err(format!(
                "d_model {d}, d_inner {e} (not multiples of 4?) or d_conv {} (< 2?)",
                c.d_conv
            ));
        }
        let lim = dev.limits();
        let mut mats = Vec::new();
        for (name, l) in ["in", "x", "dt", "out"].into_iter().zip(layers) {
            mats.push((name, l.upload(dev)?));
        }
        mats.push(("emb", emb));
        let buffers = mats.iter().map(|(_, p)| p.scales.is_some() as u32 + 1).sum::<u32>() + 8;
        if buffers > lim.max_storage_buffers_per_shader_stage {
            return Err(format!(
                "{buffers} storage buffers; the device allows {}",
                lim.max_storage_buffers_per_shader_stage
            ));
        }
        let xl = (c.dt_rank + 2 * c.d_state) as u32;
        let x_h = 4;
        let x_part = x_h + d;
        let x_y = x_part + split.groups * xl;
        let words = x_y + e;
        // The shader's workgroup arrays: hs, xn, red, wsum, xzs, zs, us, xdb, dts, ys, abort.
        let wg_bytes = 4 * (2 * d + split.wgs + 32 + 3 * split.ch + 2 * split.cpw + xl + e + 1);
        if wg_bytes > lim.max_compute_workgroup_storage_size {
            return Err(format!(
                "{wg_bytes} bytes of workgroup memory; the device allows {}",
                lim.max_compute_workgroup_storage_size
            ));
        }
        let header = format!(
            "const D: u32 = {d}u;\nconst E: u32 = {e}u;\nconst NS: u32 = {}u;\nconst R: u32 = {}u;\n\
             const KC: u32 = {}u;\nconst L: u32 = {}u;\nconst XL: u32 = {xl}u;\n\
             const WGS: u32 = {}u;\nconst P: u32 = {}u;\nconst CPW: u32 = {}u;\nconst CH: u32 = {}u;\n\
             const O_NORM: u32 = {}u;\nconst O_CONVW: u32 = {}u;\nconst O_CONVB: u32 = {}u;\n\
             const O_DTB: u32 = {}u;\nconst O_A: u32 = {}u;\nconst O_D: u32 = {}u;\n\
             const O_STRIDE: u32 = {}u;\n\
             const X_H: u32 = {x_h}u;\nconst X_PART: u32 = {x_part}u;\nconst X_Y: u32 = {x_y}u;\n\
             const EPS: f32 = {:?};\n\
             const DBC_RMS: bool = {};\nconst SPIN: u32 = {SPIN}u;\n",
            c.d_state,
            c.dt_rank,
            c.d_conv,
            c.n_layer,
            split.wgs,
            split.groups,
            split.cpw,
            split.ch,
            smalls.attn_norm,
            smalls.conv_w,
            smalls.conv_b,
            smalls.dt_bias,
            smalls.a,
            smalls.d,
            smalls.stride,
            c.eps,
            c.dt_b_c_rms,
        );
        let mut src = header;
        let mut binding = 8;
        for (name, p) in &mats {
            src.push_str(&loader(p.format, name, binding));
            binding += 2;
        }
        src.push_str(if subgroups32 { TEAM_SUM_SUBGROUP } else { TEAM_SUM_SHARED });
        src.push_str(ACTIVATIONS);
        src.push_str(include_str!("shaders/fused_step.wgsl"));
        let pipeline = compile(dev, "fused step", &src).map_err(|e| format!("pipeline: {e}"))?;
        let scratch = |label, words: u32| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 4 * u64::from(words),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let xch = scratch("fused xch", words);
        let sync = scratch("fused sync", 2);
        let mut weights = Vec::new();
        for (i, (_, p)) in mats.iter().enumerate() {
            let at = 8 + 2 * i as u32;
            weights.push((at, &p.data));
            weights.extend(p.scales.as_ref().map(|s| (at + 1, s)));
        }
        let fixed = [
            (0, &xch),
            (1, shared.smalls),
            (2, shared.meta),
            (3, shared.argmax),
            (5, shared.conv),
            (6, shared.ssm),
            (7, &sync),
            (20, shared.x),
        ];
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> = fixed
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        entries.extend(
            weights
                .iter()
                .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }),
        );
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fused step"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("bind group: {e}"));
        }
        Ok(FusedStep { pipeline, bind, sync, split })
    }

    /// How the step is split.
    pub(crate) fn split(&self) -> Split {
        self.split
    }

    /// Records the step: clears the barrier counter and the abandon flag, runs the dispatch, and
    /// copies the flag (4 bytes) to `flag_to` at `flag_at`, where the caller checks that it is 0.
    /// The caller records the LM head and argmax after it.
    pub(crate) fn record(&self, enc: &mut wgpu::CommandEncoder, flag_to: &wgpu::Buffer, flag_at: u64) {
        enc.clear_buffer(&self.sync, 0, Some(8));
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fused step"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.bind, &[]);
            pass.dispatch_workgroups(self.split.groups, 1, 1);
        }
        enc.copy_buffer_to_buffer(&self.sync, 4, flag_to, flag_at, 4);
    }
}

/// Team (32 threads, a warp) sums as one subgroup operation, where subgroups are exactly the
/// shader's teams of 32.
const TEAM_SUM_SUBGROUP: &str = "
fn team_sum(v: f32, lid: u32) -> f32 {
    return subgroupAdd(v);
}
";

/// Team sums through workgroup memory, for devices without 32-lane subgroups.
const TEAM_SUM_SHARED: &str = "
fn team_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 16u; s > 0u; s >>= 1u) {
        if lid % 32u < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[lid - lid % 32u];
    workgroupBarrier();
    return r;
}
";

/// `raw_{name}` / `cook_{name}` over bindings `binding` (data) and `binding + 1` (scales):
/// the format's `weights_*.wgsl` with its names made unique.
fn loader(format: Format, name: &str, binding: u32) -> String {
    const SCALES: &str = "\u{1}";
    format
        .shader()
        .replace(
            "@binding(2) var<storage, read> w:",
            &format!("@binding({binding}) var<storage, read> w_{name}:"),
        )
        .replace(
            "@binding(3) var<storage, read> ws:",
            &format!("@binding({}) var<storage, read> ws_{name}:", binding + 1),
        )
        .replace("ws[", SCALES)
        .replace("w[", &format!("w_{name}["))
        .replace(SCALES, &format!("ws_{name}["))
        .replace("fn load_w(", &format!("fn load_{name}("))
        .replace("fn raw_w(", &format!("fn raw_{name}("))
        .replace("fn cook_w(", &format!("fn cook_{name}("))
}
