"""GPT-style decoder-only transformer: the baseline the default Mamba model is compared with.

Purpose
    A plain, modern small transformer (pre-norm RMSNorm, rotary position
    embeddings, causal multi-head attention through PyTorch's
    scaled_dot_product_attention, GELU MLP, no biases, tied embeddings), sized
    to the same parameter count as the Mamba model and trained by train.py on
    the same data and token budget.  Its memory per sequence is a KV cache that
    grows with every token (2 * n_layer * d_model values per token), which is
    the cost the Mamba model avoids.

Used by train.py and eval.py; no command-line interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTArgs:
    vocab_size: int = 8192
    d_model: int = 512
    n_layer: int = 8
    n_head: int = 8
    d_ff: int = 2304
    eps: float = 1e-5
    rope_base: float = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope(x, cos, sin):
    """Rotate pairs (first half, second half) of the head dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, a: GPTArgs):
        super().__init__()
        self.a = a
        self.norm1 = RMSNorm(a.d_model, a.eps)
        self.qkv = nn.Linear(a.d_model, 3 * a.d_model, bias=False)
        self.proj = nn.Linear(a.d_model, a.d_model, bias=False)
        self.norm2 = RMSNorm(a.d_model, a.eps)
        self.fc1 = nn.Linear(a.d_model, a.d_ff, bias=False)
        self.fc2 = nn.Linear(a.d_ff, a.d_model, bias=False)

    def forward(self, h, cos, sin):
        b, L, d = h.shape
        nh = self.a.n_head
        q, k, v = self.qkv(self.norm1(h)).view(b, L, 3, nh, d // nh).permute(2, 0, 3, 1, 4)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(y.transpose(1, 2).reshape(b, L, d)).float()
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h)), approximate="tanh")).float()


class GPT(nn.Module):
    def __init__(self, a: GPTArgs):
        super().__init__()
        self.args = a
        self.embed = nn.Embedding(a.vocab_size, a.d_model)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.norm_f = RMSNorm(a.d_model, a.eps)
        self.lm_head = nn.Linear(a.d_model, a.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight

    def init_weights(self, seed: int = 0):
        """GPT-2 init: N(0, .02), residual projections scaled by 1/sqrt(2 n_layer)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * self.args.n_layer) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                    p.normal_(0, std, generator=gen)

    def rotary(self, L: int, device):
        hd = self.args.d_model // self.args.n_head
        inv = 1.0 / (self.args.rope_base ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        f = torch.outer(torch.arange(L, device=device, dtype=torch.float32), inv)
        return f.cos(), f.sin()

    def forward(self, ids):
        cos, sin = self.rotary(ids.shape[1], ids.device)
        h = self.embed(ids).float()
        for blk in self.layers:
            h = blk(h, cos, sin)
        return self.lm_head(self.norm_f(h))
