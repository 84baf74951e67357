//! One Mamba-1 model on the GPU: weights uploaded once, `slots` resident recurrent states, and a
//! prerecorded plan of dispatches that every call replays inside one compute pass.
//!
//! The plan, for a call of n tokens (B decode rows, or one slot's prefill chunk):
//! ```text
//! embed                    x  (n, d_model)      = token_embd[ids]
//! per layer:
//!   in_proj  (MatNorm)     xz (n, 2·d_inner)    = RMSNorm(x)·attn_norm · W_inᵀ
//!   x_proj   (MatConv)     xdb (n, r + 2·N)     = u · W_xᵀ,  u = SiLU(conv1d(xz[:, :d_inner]))
//!   scan     (Scan)        y  (n, d_inner)      = scan(u, softplus(W_dt·δ + b), A, B, C, D) · SiLU(z)
//!   out_proj (MatPlain)    x += y · W_outᵀ
//! lm_head  (MatNorm)       logits (n_out, vocab) = RMSNorm(x[rows])·norm_f · W_outputᵀ
//! ```
//! so a step is 4·n_layer + 2 dispatches and one submission. Each sequence's token rows are
//! described by a small table (`meta`, see `shaders/common.wgsl`) written before the submission;
//! the conv kernel reads a slot's window and the scan kernel, which runs after every reader,
//! shifts it.

use crate::device::{ErrorSlot, Gpu};
use crate::kernels::{EmbedParams, MM_ROWS, MM_TOKENS, MatParams, Op, Pipelines, Run, ScanParams, WG};
use crate::weights::{Format, Packed, pack, same_tensor};
use crate::{GpuError, TokenId};
use std::sync::mpsc;
use tinystate_engine::arch::mamba::{Config, Mamba};
use tinystate_engine::tensor::Matrix;
use wgpu::util::DeviceExt;

/// Index of a fixed-size state slot on the GPU (0..slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// How a dispatch's second grid dimension follows the call's sizes.
#[derive(Clone, Copy, Debug)]
enum Rows {
    /// One workgroup row per token (embed).
    Tokens,
    /// One per MM_TOKENS tokens (matmuls over every token).
    TokenTiles,
    /// One per MM_TOKENS logits rows (lm_head).
    OutTiles,
    /// One per sequence (scan).
    Seqs,
}

/// One recorded dispatch: pipeline, bindings, grid.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    x: u32,
    rows: Rows,
}

/// Activation buffers, sized for `max_tok` tokens.
struct Acts {
    /// Token table (max_tok + max_batch, 4) u32.
    meta: wgpu::Buffer,
    /// Run sizes (uniform).
    run: wgpu::Buffer,
    /// Hidden states (max_tok, d_model).
    x: wgpu::Buffer,
    /// [u_in | z] (max_tok, 2·d_inner).
    xz: wgpu::Buffer,
    /// [δ | B | C] (max_tok, dt_rank + 2·d_state).
    xdb: wgpu::Buffer,
    /// Conv + SiLU output u (max_tok, d_inner).
    u: wgpu::Buffer,
    /// Gated scan output (max_tok, d_inner).
    y: wgpu::Buffer,
    /// Logits (max_batch, vocab).
    logits: wgpu::Buffer,
    /// Mappable copy of the logits (max_batch, vocab).
    staging: wgpu::Buffer,
}

/// Resident recurrent states of every slot.
struct States {
    /// Conv windows (slots, n_layer, d_conv − 1, d_inner).
    conv: wgpu::Buffer,
    /// SSM states (slots, n_layer, d_inner, d_state).
    ssm: wgpu::Buffer,
    /// Bytes per slot in `conv` / `ssm`.
    conv_slot: u64,
    ssm_slot: u64,
}

/// One uploaded matrix.
struct GpuMatrix {
    format: Format,
    rows: u32,
    groups: u32,
    data: wgpu::Buffer,
    scales: Option<wgpu::Buffer>,
}

/// Offsets (in floats) of one layer's small f32 vectors inside the `smalls` buffer.
#[derive(Clone, Copy, Default)]
struct SmallOffs {
    attn_norm: u32,
    conv_w: u32,
    conv_b: u32,
    dt_bias: u32,
    a: u32,
    d: u32,
}

/// One model's weights on the GPU plus `slots` resident state slots. Used from one thread.
pub struct GpuModel {
    device: wgpu::Device,
    queue: wgpu::Queue,
    errors: ErrorSlot,
    config: Config,
    slots: u32,
    max_batch: u32,
    max_chunk: u32,
    max_tok: u32,
    acts: Acts,
    states: States,
    plan: Vec<Dispatch>,
    /// Slots to zero at the start of the next call.
    pending_resets: Vec<u32>,
    /// Bytes of weights one call reads (each matrix once; the embedding rows not counted).
    weight_bytes: u64,
}

/// Builds buffers and bind groups, checking sizes against the device limits.
struct Builder<'d> {
    dev: &'d wgpu::Device,
    limit: u64,
    pipes: Pipelines,
}

impl Builder<'_> {
    fn check(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        if bytes > self.limit {
            return Err(GpuError::TooLarge { what: format!("{what} ({bytes} bytes)"), limit: self.limit });
        }
        Ok(())
    }

    /// A zeroed storage buffer of `bytes` (at least 4).
    fn storage(&self, what: &str, bytes: u64, extra: wgpu::BufferUsages) -> Result<wgpu::Buffer, GpuError> {
        self.check(what, bytes)?;
        Ok(self.dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
            mapped_at_creation: false,
        }))
    }

    fn init(&self, what: &str, data: &[u8], usage: wgpu::BufferUsages) -> Result<wgpu::Buffer, GpuError> {
        self.check(what, data.len() as u64)?;
        Ok(self.dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents: data,
            usage,
        }))
    }

    fn matrix(&self, what: &str, m: &Matrix<'_>) -> Result<GpuMatrix, GpuError> {
        let Packed { format, rows, groups, data, scales } = pack(m)?;
        let usage = wgpu::BufferUsages::STORAGE;
        let data = self.init(what, &data, usage)?;
        let scales = scales.map(|s| self.init(what, &s, usage)).transpose()?;
        let rows = u32::try_from(rows)
            .map_err(|_| GpuError::TooLarge { what: what.into(), limit: u32::MAX.into() })?;
        Ok(GpuMatrix { format, rows, groups: groups as u32, data, scales })
    }

    /// A dispatch of `op` over `w`, with a uniform holding `params` at binding 0 and `bufs`.
    fn dispatch<P: bytemuck::Pod>(
        &mut self,
        op: Op,
        w: &GpuMatrix,
        params: &P,
        bufs: &[(u32, &wgpu::Buffer)],
        x: u32,
        rows: Rows,
    ) -> Result<Dispatch, GpuError> {
        let pipeline = self.pipes.get(self.dev, op, w.format)?;
        let uni = self.init("params", bytemuck::bytes_of(params), wgpu::BufferUsages::UNIFORM)?;
        let mut entries = vec![(0, &uni), (2, &w.data)];
        if let Some(s) = &w.scales {
            entries.push((3, s));
        }
        entries.extend_from_slice(bufs);
        let entries: Vec<_> = entries
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        let bind = self.dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("tinystate"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch { pipeline, bind, x, rows })
    }
}

/// The small per-layer f32 vectors of every layer, then norm_f, in one array.
fn smalls(m: &Mamba<'_>) -> (Vec<f32>, Vec<SmallOffs>, u32) {
    let mut v = Vec::new();
    let mut push = |s: &[f32]| {
        let off = v.len() as u32;
        v.extend_from_slice(s);
        off
    };
    let offs = m
        .layers
        .iter()
        .map(|l| SmallOffs {
            attn_norm: push(l.attn_norm),
            conv_w: push(l.conv_w),
            conv_b: push(l.conv_b),
            dt_bias: push(l.dt_bias),
            a: push(l.a),
            d: push(l.d),
        })
        .collect();
    let norm_f = push(m.norm_f);
    (v, offs, norm_f)
}

fn u32_of(what: &str, v: usize) -> Result<u32, GpuError> {
    u32::try_from(v).map_err(|_| GpuError::TooLarge { what: format!("{what} = {v}"), limit: u32::MAX.into() })
}

/// Bytes of a matrix as uploaded.
fn matrix_bytes(w: &GpuMatrix) -> u64 {
    w.data.size() + w.scales.as_ref().map_or(0, |s| s.size())
}

impl GpuModel {
    /// Uploads the weights once. `max_batch`: most decode rows per `step`;
    /// `max_chunk`: most tokens per `prefill` call.
    pub fn load(
        gpu: &Gpu,
        model: &Mamba<'_>,
        slots: u32,
        max_batch: u32,
        max_chunk: u32,
    ) -> Result<GpuModel, GpuError> {
        let c = model.config;
        if slots == 0 || max_batch == 0 || max_chunk == 0 {
            return Err(GpuError::BadInput(format!(
                "slots {slots}, max_batch {max_batch}, max_chunk {max_chunk}: each must be at least 1"
            )));
        }
        if c.d_conv < 1 {
            return Err(GpuError::Unsupported { what: "d_conv 0".into() });
        }
        let lim = gpu.device.limits();
        let limit = lim.max_storage_buffer_binding_size.min(lim.max_buffer_size);
        let max_tok = max_batch.max(max_chunk);
        // The embed kernel's grid has one row per token, the scan's one per sequence.
        let max_grid = lim.max_compute_workgroups_per_dimension;
        if max_tok > max_grid {
            return Err(GpuError::TooLarge {
                what: format!("max_batch/max_chunk {max_tok}"),
                limit: max_grid.into(),
            });
        }
        let mut b = Builder { dev: &gpu.device, limit, pipes: Pipelines::default() };
        let acts = Self::acts(&b, &c, max_tok, max_batch)?;
        let states = Self::states(&b, &c, slots)?;
        let mut m = GpuModel {
            device: gpu.device.clone(),
            queue: gpu.queue.clone(),
            errors: gpu.errors.clone(),
            config: c,
            slots,
            max_batch,
            max_chunk,
            max_tok,
            acts,
            states,
            plan: Vec::new(),
            pending_resets: Vec::new(),
            weight_bytes: 0,
        };
        m.build_plan(&mut b, model, &lim)?;
        gpu.errors.check()?;
        Ok(m)
    }

    fn acts(b: &Builder<'_>, c: &Config, max_tok: u32, max_batch: u32) -> Result<Acts, GpuError> {
        let t = u64::from(max_tok);
        let f = |n: usize| 4 * t * n as u64;
        let none = wgpu::BufferUsages::empty();
        let logits_bytes = 4 * u64::from(max_batch) * c.vocab as u64;
        Ok(Acts {
            meta: b.storage("meta", 16 * (t + u64::from(max_batch)), none)?,
            run: b.dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("run"),
                size: size_of::<Run>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            x: b.storage("x", f(c.d_model), none)?,
            xz: b.storage("xz", f(2 * c.d_inner), none)?,
            xdb: b.storage("xdb", f(c.dt_rank + 2 * c.d_state), none)?,
            u: b.storage("u", f(c.d_inner), none)?,
            y: b.storage("y", f(c.d_inner), none)?,
            logits: b.storage("logits", logits_bytes, wgpu::BufferUsages::COPY_SRC)?,
            staging: b.dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: logits_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        })
    }

    fn states(b: &Builder<'_>, c: &Config, slots: u32) -> Result<States, GpuError> {
        let conv_slot = 4 * (c.n_layer * (c.d_conv - 1) * c.d_inner) as u64;
        let ssm_slot = 4 * (c.n_layer * c.d_inner * c.d_state) as u64;
        let n = u64::from(slots);
        let none = wgpu::BufferUsages::empty();
        // Indices inside the shaders are u32 floats.
        let max_floats = u64::from(u32::MAX);
        if n * ssm_slot / 4 > max_floats {
            return Err(GpuError::TooLarge { what: format!("{slots} SSM state slots"), limit: max_floats });
        }
        Ok(States {
            conv: b.storage("conv state", n * conv_slot, none)?,
            ssm: b.storage("ssm state", n * ssm_slot, none)?,
            conv_slot,
            ssm_slot,
        })
    }

    /// Uploads the weights and records every dispatch of a call.
    fn build_plan(
        &mut self,
        b: &mut Builder<'_>,
        model: &Mamba<'_>,
        lim: &wgpu::Limits,
    ) -> Result<(), GpuError> {
        let c = self.config;
        let (small, offs, norm_f) = smalls(model);
        let small = b.init("smalls", bytemuck::cast_slice(&small), wgpu::BufferUsages::STORAGE)?;
        let embed = b.matrix("token_embd", &model.embed)?;
        let output = if same_tensor(&model.embed, &model.output) {
            None
        } else {
            Some(b.matrix("output", &model.output)?)
        };
        let (dm, di, ns, r) =
            (u32_of("d_model", c.d_model)?, c.d_inner as u32, c.d_state as u32, c.dt_rank as u32);
        let xl = r + 2 * ns;
        let eps = c.eps.to_bits();
        let a = &self.acts;
        let mut plan = Vec::new();
        let ep = EmbedParams { groups: embed.groups, cols: dm, x_stride: dm, _pad: 0 };
        plan.push(b.dispatch(
            Op::Embed,
            &embed,
            &ep,
            &[(1, &a.run), (4, &a.meta), (5, &a.x)],
            embed.groups.div_ceil(WG),
            Rows::Tokens,
        )?);
        let mut bytes = 0;
        for (l, (layer, o)) in model.layers.iter().zip(&offs).enumerate() {
            let w_in = b.matrix("ssm_in", &layer.ssm_in)?;
            let w_x = b.matrix("ssm_x", &layer.ssm_x)?;
            let w_dt = b.matrix("ssm_dt", &layer.ssm_dt)?;
            let w_out = b.matrix("ssm_out", &layer.ssm_out)?;
            bytes += [&w_in, &w_x, &w_dt, &w_out].iter().map(|w| matrix_bytes(w)).sum::<u64>();
            let l = l as u32;
            let mp = |w: &GpuMatrix, cols: u32, x_stride: u32, o_stride: u32, aux: [u32; 4]| MatParams {
                rows: w.rows,
                cols,
                groups: w.groups,
                x_stride,
                o_stride,
                layer: l,
                aux,
                ..Default::default()
            };
            let tiles = |w: &GpuMatrix| w.rows.div_ceil(MM_ROWS);
            let p = mp(&w_in, dm, dm, 2 * di, [o.attn_norm, eps, 0, 0]);
            plan.push(b.dispatch(
                Op::MatNorm,
                &w_in,
                &p,
                &[(1, &a.run), (4, &a.x), (5, &a.xz), (6, &small)],
                tiles(&w_in),
                Rows::TokenTiles,
            )?);
            let p = mp(&w_x, di, 2 * di, xl, [o.conv_w, o.conv_b, c.d_conv as u32, c.n_layer as u32]);
            let bufs = [
                (1, &a.run),
                (4, &a.xz),
                (5, &a.xdb),
                (6, &small),
                (7, &self.states.conv),
                (8, &a.meta),
                (9, &a.u),
            ];
            plan.push(b.dispatch(Op::MatConv, &w_x, &p, &bufs, tiles(&w_x), Rows::TokenTiles)?);
            let sp = ScanParams {
                d_inner: di,
                n_state: ns,
                dt_rank: r,
                dt_groups: w_dt.groups,
                n_layer: c.n_layer as u32,
                layer: l,
                d_conv: c.d_conv as u32,
                dbc_rms: c.dt_b_c_rms as u32,
                eps_bits: eps,
                off_dt_bias: o.dt_bias,
                off_a: o.a,
                off_d: o.d,
                xdb_stride: xl,
                max_tok: self.max_tok,
                _pad: [0; 2],
            };
            let bufs = [
                (1, &a.run),
                (4, &a.xz),
                (5, &a.xdb),
                (6, &small),
                (7, &self.states.conv),
                (8, &a.meta),
                (9, &a.u),
                (10, &self.states.ssm),
                (11, &a.y),
            ];
            plan.push(b.dispatch(Op::Scan, &w_dt, &sp, &bufs, di.div_ceil(WG), Rows::Seqs)?);
            let p = MatParams { add: 1, ..mp(&w_out, di, di, dm, [0; 4]) };
            plan.push(b.dispatch(
                Op::MatPlain,
                &w_out,
                &p,
                &[(1, &a.run), (4, &a.y), (5, &a.x)],
                tiles(&w_out),
                Rows::TokenTiles,
            )?);
        }
        let head = output.as_ref().unwrap_or(&embed);
        bytes += matrix_bytes(head);
        let p = MatParams {
            rows: head.rows,
            cols: dm,
            groups: head.groups,
            x_stride: dm,
            o_stride: head.rows,
            head: 1,
            aux: [norm_f, eps, 0, 0],
            ..Default::default()
        };
        let x = head.rows.div_ceil(MM_ROWS);
        let max_x = lim.max_compute_workgroups_per_dimension;
        if x > max_x || di.div_ceil(WG) > max_x || embed.groups.div_ceil(WG) > max_x {
            return Err(GpuError::TooLarge {
                what: format!("workgroup grid of {x} for the LM head"),
                limit: max_x.into(),
            });
        }
        plan.push(b.dispatch(
            Op::MatNorm,
            head,
            &p,
            &[(1, &a.run), (4, &a.x), (5, &a.logits), (6, &small)],
            x,
            Rows::OutTiles,
        )?);
        self.plan = plan;
        self.weight_bytes = bytes;
        Ok(())
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.config.vocab
    }

    /// Number of state slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Most decode rows per [`GpuModel::step`].
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }

    /// Most tokens per [`GpuModel::prefill`].
    pub fn max_chunk(&self) -> u32 {
        self.max_chunk
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Compute dispatches recorded per call (step or prefill chunk), all in one compute pass.
    pub fn dispatches_per_call(&self) -> usize {
        self.plan.len()
    }

    /// Bytes of weight matrices one call reads (each once; embedding rows not counted unless tied
    /// to the LM head).
    pub fn weight_bytes_per_call(&self) -> u64 {
        self.weight_bytes
    }

    /// Zeroes a slot's state (a new sequence). Takes effect before the next step/prefill.
    pub fn reset(&mut self, slot: SlotId) -> Result<(), GpuError> {
        self.check_slot(slot)?;
        if !self.pending_resets.contains(&slot.0) {
            self.pending_resets.push(slot.0);
        }
        Ok(())
    }

    /// One decode step for every (slot, token) row, one submission. Slots in a batch are distinct.
    /// Writes rows.len() × vocab logits into `logits` (row-major, in the order of `rows`).
    pub fn step(&mut self, rows: &[(SlotId, TokenId)], logits: &mut [f32]) -> Result<(), GpuError> {
        let n = rows.len();
        if n == 0 || n > self.max_batch as usize {
            return Err(GpuError::BadInput(format!("batch of {n} rows; allowed 1..={}", self.max_batch)));
        }
        self.check_logits(logits, n)?;
        for (i, &(slot, tok)) in rows.iter().enumerate() {
            self.check_slot(slot)?;
            self.check_token(tok)?;
            if rows[..i].iter().any(|&(s, _)| s == slot) {
                return Err(GpuError::BadInput(format!("slot {} appears twice in one batch", slot.0)));
            }
        }
        let mut meta = vec![0u32; 4 * (self.max_tok as usize + n)];
        for (i, &(slot, tok)) in rows.iter().enumerate() {
            meta[4 * i..4 * i + 4].copy_from_slice(&[tok.0, slot.0, i as u32, 0]);
            let s = 4 * (self.max_tok as usize + i);
            meta[s..s + 4].copy_from_slice(&[slot.0, i as u32, 1, 0]);
        }
        let n = n as u32;
        self.call(&meta, Run { n_tok: n, n_seq: n, out_row0: 0, n_out: n }, logits)
    }

    /// A prefill chunk of 1..=max_chunk tokens for one slot; writes the last position's logits (vocab).
    pub fn prefill(&mut self, slot: SlotId, tokens: &[TokenId], logits: &mut [f32]) -> Result<(), GpuError> {
        let n = tokens.len();
        if n == 0 || n > self.max_chunk as usize {
            return Err(GpuError::BadInput(format!(
                "prefill chunk of {n} tokens; allowed 1..={}",
                self.max_chunk
            )));
        }
        self.check_logits(logits, 1)?;
        self.check_slot(slot)?;
        tokens.iter().try_for_each(|&t| self.check_token(t))?;
        let mut meta = vec![0u32; 4 * (self.max_tok as usize + 1)];
        for (i, &tok) in tokens.iter().enumerate() {
            meta[4 * i..4 * i + 4].copy_from_slice(&[tok.0, slot.0, 0, i as u32]);
        }
        let s = 4 * self.max_tok as usize;
        meta[s..s + 4].copy_from_slice(&[slot.0, 0, n as u32, 0]);
        let n = n as u32;
        self.call(&meta, Run { n_tok: n, n_seq: 1, out_row0: n - 1, n_out: 1 }, logits)
    }

    fn check_slot(&self, slot: SlotId) -> Result<(), GpuError> {
        if slot.0 >= self.slots {
            return Err(GpuError::BadInput(format!("slot {} out of range (slots: {})", slot.0, self.slots)));
        }
        Ok(())
    }

    fn check_token(&self, t: TokenId) -> Result<(), GpuError> {
        if t.index() >= self.config.vocab {
            return Err(GpuError::BadInput(format!(
                "token id {t} outside the vocabulary (size {})",
                self.config.vocab
            )));
        }
        Ok(())
    }

    fn check_logits(&self, logits: &[f32], rows: usize) -> Result<(), GpuError> {
        let want = rows * self.config.vocab;
        if logits.len() != want {
            return Err(GpuError::BadInput(format!(
                "logits buffer holds {} floats; need {want}",
                logits.len()
            )));
        }
        Ok(())
    }

    /// Writes the token table, records and submits the whole plan, reads back `out`.
    fn call(&mut self, meta: &[u32], run: Run, out: &mut [f32]) -> Result<(), GpuError> {
        self.errors.check()?;
        self.queue.write_buffer(&self.acts.meta, 0, bytemuck::cast_slice(meta));
        self.queue.write_buffer(&self.acts.run, 0, bytemuck::bytes_of(&run));
        let mut enc =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("call") });
        self.record_resets(&mut enc);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            for d in &self.plan {
                let y = match d.rows {
                    Rows::Tokens => run.n_tok,
                    Rows::TokenTiles => run.n_tok.div_ceil(MM_TOKENS),
                    Rows::OutTiles => run.n_out.div_ceil(MM_TOKENS),
                    Rows::Seqs => run.n_seq,
                };
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind, &[]);
                pass.dispatch_workgroups(d.x, y, 1);
            }
        }
        let bytes = 4 * out.len() as u64;
        enc.copy_buffer_to_buffer(&self.acts.logits, 0, &self.acts.staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        self.read_back(bytes, out)?;
        self.errors.check()
    }

    fn record_resets(&mut self, enc: &mut wgpu::CommandEncoder) {
        let st = &self.states;
        for s in self.pending_resets.drain(..) {
            let s = u64::from(s);
            if st.conv_slot > 0 {
                enc.clear_buffer(&st.conv, s * st.conv_slot, Some(st.conv_slot));
            }
            enc.clear_buffer(&st.ssm, s * st.ssm_slot, Some(st.ssm_slot));
        }
    }

    /// Maps the first `bytes` of the staging buffer, waits, copies them to `out`.
    fn read_back(&self, bytes: u64, out: &mut [f32]) -> Result<(), GpuError> {
        let (tx, rx) = mpsc::channel();
        let slice = self.acts.staging.slice(..bytes);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            // The receiver lives until after the poll below; a failed send only means it is gone.
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        match rx.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(GpuError::DeviceLost(format!("map_async: {e}"))),
            Err(_) => return Err(GpuError::DeviceLost("map_async did not complete".into())),
        }
        {
            let view =
                slice.get_mapped_range().map_err(|e| GpuError::DeviceLost(format!("mapped range: {e}")))?;
            for (o, c) in out.iter_mut().zip(view.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        self.acts.staging.unmap();
        Ok(())
    }
}
