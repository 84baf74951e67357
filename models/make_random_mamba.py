#!/usr/bin/env python3
"""Write a random-weight Mamba-1 GGUF of any shape, for benchmarks.

Purpose
    Benchmarks need model files of real sizes (e.g. Mamba-130m's shape) without
    downloading weights. This script writes one directly with gguf-py and numpy
    (no torch): llama.cpp's names and metadata for arch ``mamba`` (the same as
    ``convert_hf_to_gguf.py`` writes), random weights of a sensible scale, and a
    byte-level BPE tokenizer llama.cpp accepts. Tensors are generated, quantised
    and written one at a time, so memory stays near one tensor's size.

Usage
    python models/make_random_mamba.py --d-model 768 --layers 24 --vocab 50280 \\
        --outtype q8_0 mamba-130m-random-q8_0.gguf
    Options: --d-state 16 --d-conv 4 --expand 2 --dt-rank auto --untied --seed 0
             --eps 1e-5 --name NAME --tokenizer DIR (default: engine/tests/fixtures/tokenizer)
    Mamba-130m: --d-model 768 --layers 24 --vocab 50280 (d_inner 1536, d_state 16,
    d_conv 4, dt_rank 48). Mamba-370m: --d-model 1024 --layers 48 --vocab 50280.

Output
    One GGUF file. Tensor types follow convert_hf_to_gguf.py (1-D, norms,
    ssm_conv1d, ssm_a, ssm_d stay F32; 2-D weights get --outtype, F16 where the row
    length is not a multiple of the block size). The tokenizer is the fixture
    tokenizer (512 tokens, <|endoftext|> = 0) padded to --vocab with NORMAL tokens
    "<extra_N>", which the BPE never produces but which decode to their text.
    The weights are N(0, 1/fan_in) for projections, N(0, 0.1) for the embedding,
    A = -(1..d_state), D = 1, softplus(dt_bias) in [0.001, 0.1]: the model is
    numerically well behaved but says nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import gguf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from convert_hf_to_gguf import OUTTYPES, choose_type  # noqa: E402  (same type rules)

DEFAULT_TOKENIZER = HERE.parent / "engine" / "tests" / "fixtures" / "tokenizer"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tensor_specs(a):
    """[(name, numpy shape, generator)] in the order written."""
    d, di, ds, dc, r, v = a.d_model, a.d_inner, a.d_state, a.d_conv, a.dt_rank, a.vocab

    def normal(std):
        return lambda rng, shape: (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def const(val):
        return lambda rng, shape: np.full(shape, val, dtype=np.float32)

    def uniform(lo, hi):
        return lambda rng, shape: rng.uniform(lo, hi, size=shape).astype(np.float32)

    def a_init(rng, shape):
        return -np.broadcast_to(np.arange(1, shape[1] + 1, dtype=np.float32), shape).copy()

    def dt_bias(rng, shape):
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), size=shape))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # softplus^-1

    specs = [("token_embd.weight", (v, d), normal(0.1))]
    for b in range(a.layers):
        p = f"blk.{b}."
        specs += [
            (p + "attn_norm.weight", (d,), const(1.0)),
            (p + "ssm_in.weight", (2 * di, d), normal(d ** -0.5)),
            (p + "ssm_conv1d.weight", (di, dc), uniform(-dc ** -0.5, dc ** -0.5)),
            (p + "ssm_conv1d.bias", (di,), const(0.0)),
            (p + "ssm_x.weight", (r + 2 * ds, di), normal(di ** -0.5)),
            (p + "ssm_dt.weight", (di, r), uniform(-r ** -0.5, r ** -0.5)),
            (p + "ssm_dt.bias", (di,), dt_bias),
            (p + "ssm_a", (di, ds), a_init),
            (p + "ssm_d", (di,), const(1.0)),
            (p + "ssm_out.weight", (d, di), normal(di ** -0.5 / math.sqrt(a.layers))),
        ]
    specs.append(("output_norm.weight", (d,), const(1.0)))
    if a.untied:
        specs.append(("output.weight", (v, d), normal(d ** -0.5)))
    return specs


def nbytes(shape, qt: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qt]
    n = int(np.prod(shape))
    assert shape[-1] % block == 0
    return n // block * size


def tokenizer_vocab(tok_dir: Path, n_vocab: int):
    tj = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(tj["model"]["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    for i, t in added.items():
        vocab.setdefault(t["content"], i)
    rev = {i: t for t, i in vocab.items()}
    n_tok = max(rev) + 1
    if n_tok > n_vocab:
        raise SystemExit(f"--vocab {n_vocab} is smaller than the tokenizer ({n_tok} tokens)")
    tokens, types = [], []
    for i in range(n_vocab):
        if i in rev:
            tokens.append(rev[i])
            types.append(gguf.TokenType.CONTROL if i in added and added[i].get("special")
                         else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"<extra_{i}>")
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, n_tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outfile", type=Path)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--d-conv", type=int, default=4)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--dt-rank", default="auto")
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--untied", action="store_true", help="write a separate output.weight")
    ap.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    a = ap.parse_args(argv)
    a.d_inner = a.expand * a.d_model
    a.dt_rank = -(a.d_model // -16) if a.dt_rank == "auto" else int(a.dt_rank)
    if a.expand != 2:
        log("warning: llama.cpp only loads Mamba files with expand == 2")

    t0 = time.time()
    ftype, want = OUTTYPES[a.outtype]
    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MAMBA])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(a.name or f"mamba-random-d{a.d_model}-l{a.layers}")
    w.add_context_length(2 ** 20)
    w.add_embedding_length(a.d_model)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(a.layers)
    w.add_ssm_conv_kernel(a.d_conv)
    w.add_ssm_inner_size(a.d_inner)
    w.add_ssm_state_size(a.d_state)
    w.add_ssm_time_step_rank(a.dt_rank)
    w.add_layer_norm_rms_eps(a.eps)
    w.add_ssm_dt_b_c_rms(False)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, n_tok = tokenizer_vocab(a.tokenizer, a.vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(a.tokenizer, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    specs = tensor_specs(a)
    plan = []
    for name, shape, gen in specs:
        qt = choose_type(name, np.empty((0,) * len(shape)), want)
        if shape[-1] % gguf.GGML_QUANT_SIZES[qt][0] != 0:
            log(f"  {name}: row length {shape[-1]} is not a multiple of "
                f"{gguf.GGML_QUANT_SIZES[qt][0]} ({qt.name}), falling back to F16")
            qt = gguf.GGMLQuantizationType.F16
        plan.append((name, shape, gen, qt))
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, qt), raw_dtype=qt)

    a.outfile.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file(path=a.outfile)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    counts: dict[str, int] = {}
    n_params = 0
    width = max(len(n) for n, *_ in plan) + 1
    for name, shape, gen, qt in plan:
        data = gen(rng, shape)
        q = gguf.quants.quantize(data, qt)
        w.write_tensor_data(q)
        ne = ", ".join(str(x) for x in reversed(shape))
        log(f"{name + ',':<{width}} {qt.name:<5} ne = {{{ne}}}")
        counts[qt.name] = counts.get(qt.name, 0) + 1
        n_params += data.size
    w.close()
    size = a.outfile.stat().st_size
    log(f"wrote {a.outfile}: {size / 2**20:.1f} MiB, {len(plan)} tensors, {n_params / 1e6:.1f}M params, "
        f"types {counts}, vocab {a.vocab} ({n_tok} tokenizer + {a.vocab - n_tok} extra), "
        f"d_inner {a.d_inner}, dt_rank {a.dt_rank}, {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
