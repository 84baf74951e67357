//! Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"),
//! as llama.cpp names and stores it (architecture `mamba`) and as Hugging Face's
//! `MambaForCausalLM` computes it.
//!
//! The file reads in data-flow order: [`Config`] (hyperparameters from the GGUF metadata) →
//! [`Mamba`] (weights: zero-copy views into the file) → [`State`] (per sequence, fixed size) and
//! [`Scratch`] (per instance working memory, fixed size) → [`Mamba::forward`].
//!
//! One block, for a token's hidden vector x (d_model,):
//! ```text
//! h      = RMSNorm(x) · attn_norm
//! [u, z] = ssm_in · h                       (2·d_inner,)
//! u      = SiLU(causal_conv1d(u))           (d_inner,)   conv over the last d_conv inputs
//! [δ,B,C]= ssm_x · u                        (dt_rank + 2·d_state,)
//! Δ      = softplus(ssm_dt · δ + dt_bias)   (d_inner,)
//! y      = selective_scan(u, Δ, A, B, C, D) (d_inner,)   Eqn (2a/2b), state (d_inner, d_state)
//! x      = x + ssm_out · (y · SiLU(z))
//! ```
//! The state of one sequence is per layer a conv window ((d_conv−1)·d_inner) and an SSM state
//! (d_inner·d_state): it does not grow with the sequence.

use super::ops;
use crate::TokenId;
use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::kernels;
use crate::tensor::{Elems, GgmlType, Matrix, ViewError};

/// Largest number of tokens one `forward` call processes at once; longer prompts go in chunks.
pub const DEFAULT_MAX_CHUNK: usize = 64;

/// Why a GGUF file could not be used as a Mamba model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file itself is malformed or lacks a required key.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file holds another architecture.
    #[error("general.architecture is '{0}', expected 'mamba'")]
    Architecture(String),
    /// A hyperparameter is out of range.
    #[error("metadata '{key}' = {value}: {why}")]
    Config {
        /// The metadata key.
        key: &'static str,
        /// The value found.
        value: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A required tensor is absent.
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape in the file (ggml order, ne\[0\] first).
        found: Vec<u64>,
        /// Shape required by the metadata.
        expected: Vec<u64>,
    },
    /// A tensor's storage type is not supported for its role.
    #[error("tensor '{name}' is {ty}; this role needs {allowed}")]
    Type {
        /// Tensor name.
        name: String,
        /// Type in the file.
        ty: GgmlType,
        /// Types accepted.
        allowed: &'static str,
    },
    /// A tensor's bytes cannot be viewed in place.
    #[error("tensor '{name}': {source}")]
    View {
        /// Tensor name.
        name: String,
        /// The underlying problem.
        source: ViewError,
    },
}

/// Hyperparameters, read from the `mamba.*` metadata and the tensor shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Width of the residual stream (`mamba.embedding_length`).
    pub d_model: usize,
    /// Number of blocks (`mamba.block_count`).
    pub n_layer: usize,
    /// Vocabulary size (rows of `token_embd`).
    pub vocab: usize,
    /// Width inside a block (`mamba.ssm.inner_size`).
    pub d_inner: usize,
    /// SSM state per channel (`mamba.ssm.state_size`).
    pub d_state: usize,
    /// Convolution taps (`mamba.ssm.conv_kernel`).
    pub d_conv: usize,
    /// Rank of the Δ projection (`mamba.ssm.time_step_rank`).
    pub dt_rank: usize,
    /// RMSNorm epsilon (`mamba.attention.layer_norm_rms_epsilon`).
    pub eps: f32,
    /// Falcon-Mamba's extra RMSNorm on Δ, B and C (`mamba.ssm.dt_b_c_rms`).
    pub dt_b_c_rms: bool,
}

/// Upper bound on any single dimension we accept: keeps every derived size far from overflow.
const MAX_DIM: u64 = 1 << 24;

impl Config {
    /// Reads the hyperparameters; vocabulary size comes from `token_embd`.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, ModelError> {
        let arch = g.get_str("general.architecture")?;
        if arch != "mamba" {
            return Err(ModelError::Architecture(arch.to_owned()));
        }
        let dim = |key: &'static str, min: u64| -> Result<usize, ModelError> {
            let v = g.get_u64(key)?;
            if v < min || v > MAX_DIM {
                return Err(ModelError::Config { key, value: v, why: "out of range" });
            }
            Ok(v as usize)
        };
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let vocab = embd.dims().get(1).copied().unwrap_or(0);
        if vocab == 0 || vocab > MAX_DIM {
            return Err(ModelError::Shape {
                name: embd.name.into(),
                found: embd.dims().to_vec(),
                expected: vec![g.get_u64("mamba.embedding_length").unwrap_or(0), 0],
            });
        }
        let dt_b_c_rms = match g.get("mamba.ssm.dt_b_c_rms") {
            None => false,
            Some(_) => g.get_bool("mamba.ssm.dt_b_c_rms")?,
        };
        Ok(Self {
            d_model: dim("mamba.embedding_length", 1)?,
            n_layer: dim("mamba.block_count", 1)?,
            vocab: vocab as usize,
            d_inner: dim("mamba.ssm.inner_size", 1)?,
            d_state: dim("mamba.ssm.state_size", 1)?,
            d_conv: dim("mamba.ssm.conv_kernel", 1)?,
            dt_rank: dim("mamba.ssm.time_step_rank", 1)?,
            eps: g.get_f32("mamba.attention.layer_norm_rms_epsilon")?,
            dt_b_c_rms,
        })
    }

    /// Floats in one sequence's conv windows: n_layer · (d_conv − 1) · d_inner.
    pub fn conv_state_len(&self) -> usize {
        self.n_layer * (self.d_conv - 1) * self.d_inner
    }

    /// Floats in one sequence's SSM states: n_layer · d_inner · d_state.
    pub fn ssm_state_len(&self) -> usize {
        self.n_layer * self.d_inner * self.d_state
    }

    /// Bytes of state per sequence.
    pub fn state_bytes(&self) -> usize {
        4 * (self.conv_state_len() + self.ssm_state_len())
    }

    /// Width of the `ssm_x` output: dt_rank + 2·d_state.
    fn xdb_len(&self) -> usize {
        self.dt_rank + 2 * self.d_state
    }
}

/// The weights of one block; all borrowed from the file.
#[derive(Debug)]
pub struct Layer<'a> {
    /// RMSNorm weight (d_model,).
    pub attn_norm: &'a [f32],
    /// Input projection W (2·d_inner, d_model).
    pub ssm_in: Matrix<'a>,
    /// Depthwise conv taps (d_inner, d_conv).
    pub conv_w: &'a [f32],
    /// Conv bias (d_inner,).
    pub conv_b: &'a [f32],
    /// x → [δ, B, C] projection W (dt_rank + 2·d_state, d_inner).
    pub ssm_x: Matrix<'a>,
    /// δ → Δ projection W (d_inner, dt_rank).
    pub ssm_dt: Matrix<'a>,
    /// Δ bias (d_inner,).
    pub dt_bias: &'a [f32],
    /// A = −exp(A_log) (d_inner, d_state).
    pub a: &'a [f32],
    /// Skip connection D (d_inner,).
    pub d: &'a [f32],
    /// Output projection W (d_model, d_inner).
    pub ssm_out: Matrix<'a>,
}

/// A Mamba-1 model whose weights are views into GGUF bytes.
#[derive(Debug)]
pub struct Mamba<'a> {
    /// Hyperparameters.
    pub config: Config,
    /// Token embeddings (vocab, d_model).
    pub embed: Matrix<'a>,
    /// The blocks.
    pub layers: Vec<Layer<'a>>,
    /// Final RMSNorm weight (d_model,).
    pub norm_f: &'a [f32],
    /// LM head (vocab, d_model); the embeddings when the file has no `output.weight`.
    pub output: Matrix<'a>,
}

/// Looks tensors up by name and checks their shapes against the config.
struct Loader<'g, 'a> {
    g: &'g Gguf<'a>,
}

impl<'a> Loader<'_, 'a> {
    fn info(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo<'a>, ModelError> {
        let t = self.g.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        // ggml drops trailing dimensions of 1, so compare with those removed on both sides.
        let trim = |s: &[u64]| {
            let n = s.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
            s[..n].to_vec()
        };
        let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if trim(t.dims()) != trim(&want) {
            return Err(ModelError::Shape { name: name.into(), found: t.dims().to_vec(), expected: want });
        }
        Ok(t)
    }

    /// An f32 vector or matrix, read in place.
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<&'a [f32], ModelError> {
        let t = self.info(name, shape)?;
        let n = shape.iter().product();
        match Elems::new(t.ty, t.data, n) {
            Ok(Elems::F32(v)) => Ok(v),
            Ok(_) => Err(ModelError::Type { name: name.into(), ty: t.ty, allowed: "F32" }),
            Err(source) => Err(ModelError::View { name: name.into(), source }),
        }
    }

    /// A weight matrix W (rows, cols) in any supported type; ggml shape is [cols, rows].
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix<'a>, ModelError> {
        let t = self.info(name, &[cols, rows])?;
        Matrix::new(t.ty, t.data, rows, cols).map_err(|source| ModelError::View { name: name.into(), source })
    }

    fn layer(&self, i: usize, c: &Config) -> Result<Layer<'a>, ModelError> {
        let n = |s: &str| format!("blk.{i}.{s}");
        Ok(Layer {
            attn_norm: self.f32s(&n("attn_norm.weight"), &[c.d_model])?,
            ssm_in: self.matrix(&n("ssm_in.weight"), 2 * c.d_inner, c.d_model)?,
            conv_w: self.f32s(&n("ssm_conv1d.weight"), &[c.d_conv, c.d_inner])?,
            conv_b: self.f32s(&n("ssm_conv1d.bias"), &[c.d_inner])?,
            ssm_x: self.matrix(&n("ssm_x.weight"), c.xdb_len(), c.d_inner)?,
            ssm_dt: self.matrix(&n("ssm_dt.weight"), c.d_inner, c.dt_rank)?,
            dt_bias: self.f32s(&n("ssm_dt.bias"), &[c.d_inner])?,
            a: self.f32s(&n("ssm_a"), &[c.d_state, c.d_inner])?,
            d: self.f32s(&n("ssm_d"), &[c.d_inner])?,
            ssm_out: self.matrix(&n("ssm_out.weight"), c.d_model, c.d_inner)?,
        })
    }
}

impl<'a> Mamba<'a> {
    /// Builds the model from a parsed GGUF file, checking every tensor's presence, shape and
    /// type. Nothing is copied: the weights stay in the file's bytes.
    pub fn load(g: &Gguf<'a>) -> Result<Self, ModelError> {
        let config = Config::from_gguf(g)?;
        let c = &config;
        let ld = Loader { g };
        let embed = ld.matrix("token_embd.weight", c.vocab, c.d_model)?;
        let output = match g.tensor("output.weight") {
            Some(_) => ld.matrix("output.weight", c.vocab, c.d_model)?,
            None => embed,
        };
        let layers = (0..c.n_layer).map(|i| ld.layer(i, c)).collect::<Result<_, _>>()?;
        Ok(Self { config, embed, layers, norm_f: ld.f32s("output_norm.weight", &[c.d_model])?, output })
    }

    /// Runs `tokens` through the model, updating `state`. Tokens beyond the scratch's chunk size
    /// are processed in several chunks. With `want_logits`, returns the logits (vocab,) of the
    /// last token, which stay in `scratch`.
    ///
    /// Out-of-range token ids must be rejected by the caller ([`Mamba::check_tokens`]).
    pub fn forward<'s>(
        &self,
        state: &mut State,
        scratch: &'s mut Scratch,
        tokens: &[TokenId],
        want_logits: bool,
    ) -> Option<&'s mut [f32]> {
        for chunk in tokens.chunks(scratch.max_chunk) {
            self.forward_chunk(state, scratch, chunk);
        }
        if !want_logits || tokens.is_empty() {
            return None;
        }
        Some(self.logits(scratch, (tokens.len() - 1) % scratch.max_chunk))
    }

    /// Checks that every id is inside the vocabulary; returns the first one that is not.
    pub fn check_tokens(&self, tokens: &[TokenId]) -> Result<(), TokenId> {
        match tokens.iter().find(|t| t.index() >= self.config.vocab) {
            Some(&t) => Err(t),
            None => Ok(()),
        }
    }

    /// All blocks over one chunk of at most `max_chunk` tokens; leaves the hidden states of the
    /// chunk in `s.x`.
    fn forward_chunk(&self, state: &mut State, s: &mut Scratch, tokens: &[TokenId]) {
        let c = &self.config;
        let t = tokens.len();
        let dm = c.d_model;
        for (i, &tok) in tokens.iter().enumerate() {
            kernels::dequantize_row(&mut s.x[i * dm..(i + 1) * dm], &self.embed, tok.index());
        }
        for (l, layer) in self.layers.iter().enumerate() {
            self.block(layer, state.layer(c, l), s, t);
        }
    }

    /// One block over `t` tokens whose hidden states are in `s.x`.
    fn block(&self, w: &Layer<'_>, (conv, ssm): (&mut [f32], &mut [f32]), s: &mut Scratch, t: usize) {
        let c = &self.config;
        let (dm, di, r, ns) = (c.d_model, c.d_inner, c.dt_rank, c.d_state);
        let xl = c.xdb_len();
        for i in 0..t {
            ops::rmsnorm(&mut s.h[i * dm..(i + 1) * dm], &s.x[i * dm..(i + 1) * dm], w.attn_norm, c.eps);
        }
        // [u, z] (t, 2·d_inner) = h (t, d_model) · W_inᵀ
        kernels::matmul(&mut s.xz[..t * 2 * di], &w.ssm_in, &s.h[..t * dm], t, &mut s.k);
        for i in 0..t {
            let u = &s.xz[i * 2 * di..i * 2 * di + di];
            let uc = &mut s.u[i * di..(i + 1) * di];
            ops::conv_step(uc, conv, u, w.conv_w, w.conv_b);
            uc.iter_mut().for_each(|v| *v = ops::silu(*v));
        }
        // [δ, B, C] (t, dt_rank + 2·d_state) = u (t, d_inner) · W_xᵀ
        kernels::matmul(&mut s.xdb[..t * xl], &w.ssm_x, &s.u[..t * di], t, &mut s.k);
        for i in 0..t {
            let row = &mut s.xdb[i * xl..(i + 1) * xl];
            if c.dt_b_c_rms {
                let (d, bc) = row.split_at_mut(r);
                let (b, cc) = bc.split_at_mut(ns);
                ops::rmsnorm_in_place(d, c.eps);
                ops::rmsnorm_in_place(b, c.eps);
                ops::rmsnorm_in_place(cc, c.eps);
            }
            s.delta[i * r..(i + 1) * r].copy_from_slice(&row[..r]);
        }
        // Δ (t, d_inner) = softplus(δ · W_dtᵀ + b_dt)
        kernels::matmul(&mut s.dt[..t * di], &w.ssm_dt, &s.delta[..t * r], t, &mut s.k);
        for i in 0..t {
            let dt = &mut s.dt[i * di..(i + 1) * di];
            for (v, &b) in dt.iter_mut().zip(w.dt_bias) {
                *v = ops::softplus(*v + b);
            }
            let xdb = &s.xdb[i * xl..(i + 1) * xl];
            let (b, cc) = xdb[r..].split_at(ns);
            let y = &mut s.y[i * di..(i + 1) * di];
            let inp = ops::ScanInputs { x: &s.u[i * di..(i + 1) * di], dt, a: w.a, b, c: cc, d_skip: w.d };
            ops::selective_scan_step(y, ssm, &inp);
            let z = &s.xz[i * 2 * di + di..(i + 1) * 2 * di];
            for (yv, &zv) in y.iter_mut().zip(z) {
                *yv *= ops::silu(zv);
            }
        }
        // x += (y · W_outᵀ)
        kernels::matmul(&mut s.h[..t * dm], &w.ssm_out, &s.y[..t * di], t, &mut s.k);
        for (xv, &o) in s.x[..t * dm].iter_mut().zip(&s.h[..t * dm]) {
            *xv += o;
        }
    }

    /// Final norm and LM head for row `i` of the last chunk's hidden states.
    fn logits<'s>(&self, s: &'s mut Scratch, i: usize) -> &'s mut [f32] {
        let dm = self.config.d_model;
        ops::rmsnorm(&mut s.h[..dm], &s.x[i * dm..(i + 1) * dm], self.norm_f, self.config.eps);
        kernels::matmul(&mut s.logits, &self.output, &s.h[..dm], 1, &mut s.k);
        &mut s.logits
    }
}

/// The recurrent state of one sequence: fixed size, set by the config alone.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Conv windows (n_layer, d_conv − 1, d_inner), oldest input first.
    pub conv: Vec<f32>,
    /// SSM states (n_layer, d_inner, d_state).
    pub ssm: Vec<f32>,
}

impl State {
    /// A zero state (the start of a sequence).
    pub fn new(c: &Config) -> Self {
        Self { conv: vec![0.0; c.conv_state_len()], ssm: vec![0.0; c.ssm_state_len()] }
    }

    /// Back to the start of a sequence, without reallocating.
    pub fn reset(&mut self) {
        self.conv.fill(0.0);
        self.ssm.fill(0.0);
    }

    /// Layer `l`'s conv window and SSM state.
    fn layer(&mut self, c: &Config, l: usize) -> (&mut [f32], &mut [f32]) {
        let cw = (c.d_conv - 1) * c.d_inner;
        let sw = c.d_inner * c.d_state;
        (&mut self.conv[l * cw..(l + 1) * cw], &mut self.ssm[l * sw..(l + 1) * sw])
    }
}

/// Working memory for [`Mamba::forward`], sized once for chunks of up to `max_chunk` tokens.
pub struct Scratch {
    max_chunk: usize,
    /// Hidden states (max_chunk, d_model).
    x: Vec<f32>,
    /// Normed hidden states / block outputs (max_chunk, d_model).
    h: Vec<f32>,
    /// Input projection [u, z] (max_chunk, 2·d_inner).
    xz: Vec<f32>,
    /// Conv + SiLU output u (max_chunk, d_inner).
    u: Vec<f32>,
    /// [δ, B, C] (max_chunk, dt_rank + 2·d_state).
    xdb: Vec<f32>,
    /// δ, contiguous (max_chunk, dt_rank).
    delta: Vec<f32>,
    /// Δ (max_chunk, d_inner).
    dt: Vec<f32>,
    /// Scan output y (max_chunk, d_inner).
    y: Vec<f32>,
    /// Logits of one position (vocab,).
    logits: Vec<f32>,
    /// Kernel buffers (quantised activations).
    k: kernels::Scratch,
}

impl Scratch {
    /// Buffers for `c`, processing up to `max_chunk` (≥ 1) tokens per pass.
    pub fn new(c: &Config, max_chunk: usize) -> Self {
        let m = max_chunk.max(1);
        Self {
            max_chunk: m,
            x: vec![0.0; m * c.d_model],
            h: vec![0.0; m * c.d_model],
            xz: vec![0.0; m * 2 * c.d_inner],
            u: vec![0.0; m * c.d_inner],
            xdb: vec![0.0; m * c.xdb_len()],
            delta: vec![0.0; m * c.dt_rank],
            dt: vec![0.0; m * c.d_inner],
            y: vec![0.0; m * c.d_inner],
            logits: vec![0.0; c.vocab],
            k: kernels::Scratch::new(c.d_model.max(c.d_inner).max(c.dt_rank), m),
        }
    }

    /// Tokens processed per pass.
    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.x.len()
            + self.h.len()
            + self.xz.len()
            + self.u.len()
            + self.xdb.len()
            + self.delta.len()
            + self.dt.len()
            + self.y.len()
            + self.logits.len())
    }
}
