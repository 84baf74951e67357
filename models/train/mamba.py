"""Mamba-1 language model in plain PyTorch, laid out exactly like HF ``MambaForCausalLM``.

Purpose
    The training-time model of tinystate's default model. Its parameter names and
    shapes are those of Hugging Face ``transformers.MambaForCausalLM`` (prefix
    ``backbone.``; ``lm_head`` tied to the embeddings), so ``save_hf`` writes a
    folder that ``MambaForCausalLM.from_pretrained`` loads and that
    ``models/convert_hf_to_gguf.py`` converts.  ``check_equivalence.py`` checks
    that this module and HF's reference (slow, sequential) path agree.

The selective scan
    h_l = exp(dt_l * A) * h_{l-1} + dt_l * x_l * B_l,   y_l = C_l . h_l
    per channel d and state index n.  No custom CUDA kernel can be installed on
    the training machine, so ``SelectiveScan`` is a ``torch.autograd.Function``
    written with ordinary tensor ops, chunked for speed and memory:

    * the sequence is cut into chunks of T positions; all chunks advance in
      parallel through T steps (pass 1 gives each chunk's local end state and
      decay product); a short loop over the L/T chunks gives every chunk's
      true start state; pass 2 repeats the T steps from those start states and
      contracts with C on the fly.  So no (B, L, D, N) tensor exists in the
      forward pass, and the math is the exact recurrence (no log-space tricks).
    * the forward saves only its small inputs and the chunk start states; the
      backward recomputes the states and runs the reverse recurrence
      g_l = C_l * dy_l + exp(dt_{l+1} A) g_{l+1} with the same chunking.
    * each per-step update can be fused by ``torch.compile`` (``compile_scan``).

Used by train.py, eval.py and check_equivalence.py; no command-line interface.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MambaArgs:
    vocab_size: int = 8192
    d_model: int = 512
    n_layer: int = 12
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0          # 0: ceil(d_model / 16), as HF's "auto"
    eps: float = 1e-5
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_floor: float = 1e-4

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    def hf_config(self) -> dict:
        """config.json for transformers' MambaConfig (and the GGUF converter)."""
        return {
            "architectures": ["MambaForCausalLM"], "model_type": "mamba",
            "vocab_size": self.vocab_size, "hidden_size": self.d_model,
            "state_size": self.d_state, "num_hidden_layers": self.n_layer,
            "layer_norm_epsilon": self.eps, "expand": self.expand,
            "intermediate_size": self.d_inner, "conv_kernel": self.d_conv,
            "use_bias": False, "use_conv_bias": True, "hidden_act": "silu",
            "time_step_rank": self.rank, "time_step_scale": 1.0,
            "time_step_min": self.dt_min, "time_step_max": self.dt_max,
            "time_step_init_scheme": "random", "time_step_floor": self.dt_floor,
            "residual_in_fp32": True, "rescale_prenorm_residual": False,
            "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 0, "use_cache": True, "use_mambapy": False,
            "use_associative_scan": False, "initializer_range": 0.1,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf_config(cls, c: dict) -> "MambaArgs":
        return cls(vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layer=c["num_hidden_layers"],
                   d_state=c["state_size"], expand=c["intermediate_size"] // c["hidden_size"],
                   d_conv=c["conv_kernel"], dt_rank=c["time_step_rank"], eps=c["layer_norm_epsilon"])


# --------------------------------------------------------------------------- scan steps
# Each function is one step of a recurrence over all chunks at once; shapes:
# h, P, g: (B, nc, D, N); dt_t, dtx_t, dy_t: (B, nc, D); B_t, C_t: (B, nc, N); A: (D, N).

def _fwd_local(h, P, dt_t, dtx_t, B_t, A):
    a = torch.exp(dt_t[..., None] * A)
    return a * h + dtx_t[..., None] * B_t[..., None, :], P * a


def _fwd_out(h, dt_t, dtx_t, B_t, C_t, A):
    h = torch.exp(dt_t[..., None] * A) * h + dtx_t[..., None] * B_t[..., None, :]
    return h, (h * C_t[..., None, :]).sum(-1)


def _fwd_store(h, dt_t, dtx_t, B_t, A):
    return torch.exp(dt_t[..., None] * A) * h + dtx_t[..., None] * B_t[..., None, :]


def _bwd_local(g, Q, dt_next, dy_t, C_t, A):
    a_next = torch.exp(dt_next[..., None] * A)
    return a_next * g + dy_t[..., None] * C_t[..., None, :], Q * a_next


def _bwd_grads(g, dt_next, dy_t, C_t, h_t, h_prev, dt_t, dtx_t, B_t, A):
    """One reverse step: g_t from g_{t+1}, then the gradients at position t."""
    g = torch.exp(dt_next[..., None] * A) * g + dy_t[..., None] * C_t[..., None, :]
    a_t = torch.exp(dt_t[..., None] * A)
    gl = g * h_prev * a_t                       # d loss / d (dt_t * A)
    d_dtx = (g * B_t[..., None, :]).sum(-1)     # (B, nc, D)
    d_B = (g * dtx_t[..., None]).sum(-2)        # (B, nc, N)
    d_dt = (gl * A).sum(-1)                     # from the decay
    d_A = (gl * dt_t[..., None]).sum((0, 1))    # (D, N)
    d_C = (h_t * dy_t[..., None]).sum(-2)       # (B, nc, N)
    return g, d_dtx, d_B, d_dt, d_A, d_C


_STEPS = {"fwd_local": _fwd_local, "fwd_out": _fwd_out, "fwd_store": _fwd_store,
          "bwd_local": _bwd_local, "bwd_grads": _bwd_grads}
_step = dict(_STEPS)


def compile_scan(enabled: bool = True) -> None:
    """Fuse each scan step into one kernel with torch.compile (GPU training)."""
    for k, f in _STEPS.items():
        _step[k] = torch.compile(f, fullgraph=True, dynamic=False) if enabled else f


def _chunks(z: torch.Tensor, nc: int, T: int) -> torch.Tensor:
    """(B, L, K) -> (B, T, nc, K): position l = c*T + t sits at [:, t, c]."""
    b, _, k = z.shape
    return z.reshape(b, nc, T, k).transpose(1, 2).contiguous()


def _unchunk(z: torch.Tensor) -> torch.Tensor:
    b, T, nc, k = z.shape
    return z.transpose(1, 2).reshape(b, nc * T, k)


class SelectiveScan(torch.autograd.Function):
    """y = selective_scan(x, dt, A, B, C) with zero initial state (no D skip, no gate).

    x, dt: (B, L, D) float32 (dt after softplus); A: (D, N); B, C: (B, L, N).
    L must be a multiple of T (the caller pads).
    """

    @staticmethod
    def forward(ctx, x, dt, A, Bm, C, T: int):
        b, L, D = x.shape
        N = A.shape[1]
        nc = L // T
        dtr, Br, Cr = _chunks(dt, nc, T), _chunks(Bm, nc, T), _chunks(C, nc, T)
        dtxr = dtr * _chunks(x, nc, T)
        h = x.new_zeros(b, nc, D, N)
        P = x.new_ones(b, nc, D, N)
        for t in range(T):                                  # pass 1: chunk-local
            h, P = _step["fwd_local"](h, P, dtr[:, t], dtxr[:, t], Br[:, t], A)
        starts = []                                         # chunk start states
        carry = x.new_zeros(b, D, N)
        for c in range(nc):
            starts.append(carry)
            carry = torch.addcmul(h[:, c], P[:, c], carry)
        H0 = torch.stack(starts, 1)
        h, ys = H0, []
        for t in range(T):                                  # pass 2: outputs
            h, y_t = _step["fwd_out"](h, dtr[:, t], dtxr[:, t], Br[:, t], Cr[:, t], A)
            ys.append(y_t)
        y = torch.stack(ys, 1)                              # (B, T, nc, D)
        ctx.save_for_backward(x, dt, A, Bm, C, H0)
        ctx.T = T
        return _unchunk(y)

    @staticmethod
    def backward(ctx, dy):
        x, dt, A, Bm, C, H0 = ctx.saved_tensors
        T = ctx.T
        b, L, D = x.shape
        N = A.shape[1]
        nc = L // T
        xr, dtr, Br, Cr = _chunks(x, nc, T), _chunks(dt, nc, T), _chunks(Bm, nc, T), _chunks(C, nc, T)
        dtxr = dtr * xr
        dyr = _chunks(dy.to(x.dtype), nc, T)
        # recompute and keep every state
        hs = x.new_empty(b, T, nc, D, N)
        h = H0
        for t in range(T):
            h = hs[:, t] = _step["fwd_store"](h, dtr[:, t], dtxr[:, t], Br[:, t], A)
        # reverse pass 1: chunk-local g at t=0 and decay product over t=1..T-1
        zero_dt = torch.zeros_like(dtr[:, 0])
        g = x.new_zeros(b, nc, D, N)
        Q = x.new_ones(b, nc, D, N)
        for t in range(T - 1, -1, -1):
            dt_next = dtr[:, t + 1] if t + 1 < T else zero_dt
            g, Q = _step["bwd_local"](g, Q, dt_next, dyr[:, t], Cr[:, t], A)
        # chunk carries, last chunk first: G[c] = exp(dt_{c+1,0} A) * g_{c+1,0}
        a0 = torch.exp(dtr[:, 0][..., None] * A)
        carries = [None] * nc
        carry = x.new_zeros(b, D, N)
        for c in range(nc - 1, -1, -1):
            carries[c] = carry
            carry = a0[:, c] * torch.addcmul(g[:, c], Q[:, c], carry)
        G = torch.stack(carries, 1)
        # reverse pass 2: exact g_t and the gradients
        outs = [None] * T
        g = G
        for t in range(T - 1, -1, -1):
            dt_next = dtr[:, t + 1] if t + 1 < T else zero_dt
            h_prev = hs[:, t - 1] if t > 0 else H0
            g, *outs[t] = _step["bwd_grads"](
                g, dt_next, dyr[:, t], Cr[:, t], hs[:, t], h_prev, dtr[:, t], dtxr[:, t], Br[:, t], A)
        d_dtx, d_B, d_dt, d_A, d_C = (torch.stack(z, 1) for z in zip(*outs))
        d_A = d_A.sum(1)
        d_x = d_dtx * dtr
        d_dt = d_dt + d_dtx * xr
        return _unchunk(d_x), _unchunk(d_dt), d_A, _unchunk(d_B), _unchunk(d_C), None


def selective_scan(x, dt, A, Bm, C, chunk: int = 32):
    """Pads L to a multiple of `chunk` (dt = 0, x = 0 there: a no-op) and scans."""
    L = x.shape[1]
    T = min(chunk, L)
    pad = (-L) % T
    if pad:
        x, dt, Bm, C = (F.pad(z, (0, 0, 0, pad)) for z in (x, dt, Bm, C))
    y = SelectiveScan.apply(x, dt, A, Bm, C, T)
    return y[:, :L]


def selective_scan_ref(x, dt, A, Bm, C):
    """Plain sequential recurrence (HF's slow path), for tests."""
    b, L, D = x.shape
    h = x.new_zeros(b, D, A.shape[1])
    ys = []
    for l in range(L):
        h = torch.exp(dt[:, l, :, None] * A) * h + (dt[:, l] * x[:, l])[..., None] * Bm[:, l, None, :]
        ys.append((h * C[:, l, None, :]).sum(-1))
    return torch.stack(ys, 1)


# --------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class MambaMixer(nn.Module):
    def __init__(self, a: MambaArgs):
        super().__init__()
        D, N, R = a.d_inner, a.d_state, a.rank
        self.a = a
        self.in_proj = nn.Linear(a.d_model, 2 * D, bias=False)
        self.conv1d = nn.Conv1d(D, D, a.d_conv, groups=D, padding=a.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(D, 1))
        self.D = nn.Parameter(torch.ones(D))
        self.out_proj = nn.Linear(D, a.d_model, bias=False)
        self.chunk = 32

    @torch.no_grad()
    def reset_dt(self, gen: torch.Generator | None = None):
        a = self.a
        std = a.rank ** -0.5
        self.dt_proj.weight.uniform_(-std, std, generator=gen)
        dt = torch.exp(torch.rand(a.d_inner, generator=gen) * (math.log(a.dt_max) - math.log(a.dt_min))
                       + math.log(a.dt_min)).clamp(min=a.dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus

    def forward(self, hs):                      # hs: (B, L, d_model)
        L = hs.shape[1]
        xz = self.in_proj(hs)
        x, z = xz.chunk(2, dim=-1)
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)
        x = F.silu(x)
        ts, Bm, C = torch.split(self.x_proj(x), [self.a.rank, self.a.d_state, self.a.d_state], dim=-1)
        dt = F.softplus(F.linear(ts.float(), self.dt_proj.weight.float(), self.dt_proj.bias.float()))
        A = -torch.exp(self.A_log.float())
        xf = x.float()
        y = selective_scan(xf, dt, A, Bm.float(), C.float(), self.chunk)
        y = y + xf * self.D.float()
        y = y * F.silu(z.float())
        return self.out_proj(y)


class MambaBlock(nn.Module):
    def __init__(self, a: MambaArgs):
        super().__init__()
        self.norm = RMSNorm(a.d_model, a.eps)
        self.mixer = MambaMixer(a)

    def forward(self, h):                       # residual stream kept in float32
        return h + self.mixer(self.norm(h)).float()


class MambaBackbone(nn.Module):
    def __init__(self, a: MambaArgs):
        super().__init__()
        self.embeddings = nn.Embedding(a.vocab_size, a.d_model)
        self.layers = nn.ModuleList(MambaBlock(a) for _ in range(a.n_layer))
        self.norm_f = RMSNorm(a.d_model, a.eps)


class MambaLM(nn.Module):
    """Same state_dict keys as HF MambaForCausalLM (lm_head.weight is tied)."""

    def __init__(self, a: MambaArgs):
        super().__init__()
        self.args = a
        self.backbone = MambaBackbone(a)
        self.lm_head = nn.Linear(a.d_model, a.vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embeddings.weight

    def init_weights(self, seed: int = 0):
        """mamba_ssm-style init: N(0, .02) embeddings, default Linear/Conv init,
        out_proj scaled by 1/sqrt(n_layer), S4D-real A, dt in [dt_min, dt_max]."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.backbone.embeddings.weight.normal_(0, 0.02, generator=gen)
            for blk in self.backbone.layers:
                m = blk.mixer
                for lin in (m.in_proj, m.x_proj, m.out_proj):
                    bound = 1 / math.sqrt(lin.in_features)
                    lin.weight.uniform_(-bound, bound, generator=gen)
                m.out_proj.weight /= math.sqrt(self.args.n_layer)
                bound = 1 / math.sqrt(m.conv1d.weight.shape[-1])
                m.conv1d.weight.uniform_(-bound, bound, generator=gen)
                m.conv1d.bias.zero_()
                m.reset_dt(gen)

    def set_chunk(self, T: int):
        for blk in self.backbone.layers:
            blk.mixer.chunk = T

    def hidden(self, ids):
        h = self.backbone.embeddings(ids).float()
        for blk in self.backbone.layers:
            h = blk(h)
        return self.backbone.norm_f(h)

    def forward(self, ids):
        return self.lm_head(self.hidden(ids))


# --------------------------------------------------------------------------- HF folder I/O

MATRIX_SUFFIXES = ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight",
                   "embeddings.weight")


def save_hf(model: MambaLM, out: Path, max_shard_bytes: int = 15 * 2**20, half: bool = True) -> list[Path]:
    """Write config.json and model.safetensors (sharded above max_shard_bytes).

    With half=True the 2-D matrices are stored as float16 and the small
    tensors (A_log, D, conv1d, dt_proj.bias, norms) as float32.
    lm_head.weight is not stored (tied), as HF does.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.args.hf_config(), indent=2) + "\n")
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        v = v.detach().cpu().float()
        if half and k.endswith(MATRIX_SUFFIXES):
            v = v.half()
        sd[k] = v.contiguous()
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += n
    shards.append(cur)
    files = []
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        files.append(out / "model.safetensors")
    else:
        wmap = {}
        for i, s in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(s, str(out / name), metadata={"format": "pt"})
            wmap.update({k: name for k in s})
            files.append(out / name)
        total = sum(v.numel() * v.element_size() for v in sd.values())
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": wmap}, indent=2) + "\n")
    return files


def load_hf(folder: Path) -> MambaLM:
    """Load a folder written by save_hf (or by HF save_pretrained)."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    model = MambaLM(MambaArgs.from_hf_config(cfg))
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    sd = {k: v.float() for k, v in sd.items()}
    sd.setdefault("lm_head.weight", sd["backbone.embeddings.weight"])
    model.load_state_dict(sd)
    return model


def merge_shards(folder: Path) -> None:
    """Turn a sharded folder into one model.safetensors (float32 and float16 kept)."""
    from safetensors.torch import load_file, save_file

    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if not shards:
        return
    sd = {}
    for f in shards:
        sd.update(load_file(str(f)))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for f in shards:
        f.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)


def load_gguf(path: Path) -> MambaLM:
    """Load a llama.cpp ``mamba`` GGUF (any tensor type gguf-py can dequantise).

    Used to evaluate the shipped file itself (e.g. Q8_0) with eval.py.
    """
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(path))
    kv = {f.name: f for f in r.fields.values()}

    def num(name):
        f = kv[name]
        return f.parts[f.data[0]][0].item()

    a = MambaArgs(vocab_size=len(kv["tokenizer.ggml.tokens"].data), d_model=int(num("mamba.embedding_length")),
                  n_layer=int(num("mamba.block_count")), d_state=int(num("mamba.ssm.state_size")),
                  expand=int(num("mamba.ssm.inner_size")) // int(num("mamba.embedding_length")),
                  d_conv=int(num("mamba.ssm.conv_kernel")), dt_rank=int(num("mamba.ssm.time_step_rank")),
                  eps=float(num("mamba.attention.layer_norm_rms_epsilon")))
    names = {"token_embd.weight": "backbone.embeddings.weight", "output_norm.weight": "backbone.norm_f.weight",
             "output.weight": "lm_head.weight"}
    per = {"attn_norm.weight": "norm.weight", "ssm_in.weight": "mixer.in_proj.weight",
           "ssm_conv1d.weight": "mixer.conv1d.weight", "ssm_conv1d.bias": "mixer.conv1d.bias",
           "ssm_x.weight": "mixer.x_proj.weight", "ssm_dt.weight": "mixer.dt_proj.weight",
           "ssm_dt.bias": "mixer.dt_proj.bias", "ssm_a": "mixer.A_log", "ssm_d": "mixer.D",
           "ssm_out.weight": "mixer.out_proj.weight"}
    sd = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))          # ggml ne -> torch order
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if t.name in names:
            key = names[t.name]
        else:
            _, b, rest = t.name.split(".", 2)
            key = f"backbone.layers.{b}.{per[rest]}"
        if rest_is(t.name, "ssm_a"):
            w = np.log(-w)                                                  # ssm_a = -exp(A_log)
        if rest_is(t.name, "ssm_conv1d.weight"):
            w = w[:, None, :]
        sd[key] = torch.from_numpy(np.ascontiguousarray(w))
    sd.setdefault("lm_head.weight", sd["backbone.embeddings.weight"])
    model = MambaLM(a)
    model.load_state_dict(sd)
    return model


def rest_is(name: str, suffix: str) -> bool:
    return name.startswith("blk.") and name.split(".", 2)[2] == suffix


def args_dict(a: MambaArgs) -> dict:
    return asdict(a)
