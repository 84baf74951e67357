#!/usr/bin/env python3
"""Convert a Hugging Face Mamba-1 checkpoint (``MambaForCausalLM``) to GGUF.

Purpose
    Write a GGUF v3 file with llama.cpp's names and metadata for the ``mamba``
    architecture, so the file runs both in tinystate and in llama.cpp. The
    layout, metadata and tensor-type rules follow llama.cpp's own
    ``convert_hf_to_gguf.py`` (class ``MambaModel``) and gguf-py; this script
    is an independent, dependency-light reimplementation of that one path.

Input folder
    config.json          MambaConfig (hidden_size/d_model, state_size, conv_kernel,
                         expand/intermediate_size, time_step_rank, layer_norm_epsilon, ...)
    model.safetensors    weights (``model-0000x-of-0000y.safetensors`` shards also work)
    tokenizer.json       byte-level BPE (Hugging Face ``tokenizers``)
    tokenizer_config.json, chat_template.jinja   optional: special tokens, add_bos, chat template

Usage
    python models/convert_hf_to_gguf.py MODEL_DIR --outfile out.gguf --outtype q8_0
        --outtype    f32 | f16 | bf16 | q8_0 | q4_0   (default f16)
        --name       general.name (default: the folder's name)
        --tokenizer-pre NAME   tokenizer.ggml.pre (default: detected; "gpt-2" for the
                               GPT-2 byte-level regex)

Output
    One GGUF file. Per-tensor progress (name, ggml shape, type) goes to stderr,
    then a summary.

Tensor types (same rules as llama.cpp's converter)
    * 1-D tensors, ``*_norm.weight``, ``ssm_conv1d.weight`` and every tensor whose
      name does not end in ``.weight`` (``ssm_a``, ``ssm_d``, biases) stay F32.
    * Every other (2-D) weight gets the requested type. If gguf-py cannot
      quantise it (its row length, ggml ``ne[0]``, is not a multiple of the
      block size, 32 for Q8_0/Q4_0) it falls back to F16, as llama.cpp does.
    * q4_0 is not an --outtype of llama.cpp's converter (it comes from
      ``llama-quantize``); here it uses the converter's rules above, i.e. it is
      like ``llama-quantize --pure ... Q4_0`` (no Q6_K output head), with the
      F16 fallback for rows that are not a multiple of 32.

Deliberate differences from llama.cpp's converter
    * Vocabulary padding: llama.cpp rounds ``vocab_size`` up to
      ``pad_vocab_size_multiple`` (default 8) and pads the token list with
      ``[PAD{i}]`` (type UNUSED). That equals the embedding row count for real
      Mamba checkpoints; here the token list is padded to the embedding row
      count itself, so a checkpoint whose vocab is not a multiple of 8 still
      gives a file llama.cpp can load (it requires n_tokens == embedding rows).
    * llama.cpp asserts ``d_inner == 2 * d_model``; this script accepts any
      ``expand`` and only warns (llama.cpp's loader refuses such files with
      "only an expansion factor of 2 is supported for now").
    * The BPE pre-tokenizer name is chosen from tokenizer.json's pre-tokenizer,
      not from llama.cpp's table of known tokenizer hashes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

import gguf

OUTTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, gguf.GGMLQuantizationType.Q4_0),
}

ARCH = gguf.MODEL_ARCH.MAMBA


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_hparam(hp: dict, keys, default=None):
    for k in keys:
        if k in hp and hp[k] is not None:
            return hp[k]
    return default


# --------------------------------------------------------------------------- weights

def load_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint as float32/float16 numpy arrays, in file order."""
    import torch
    from safetensors import safe_open

    parts = sorted(p for p in model_dir.glob("model*.safetensors"))
    if not parts:
        raise SystemExit(f"no model*.safetensors in {model_dir}")
    out: dict[str, "torch.Tensor"] = {}
    for part in parts:
        with safe_open(str(part), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                # like llama.cpp: anything but f16/f32 (bf16, f64, ...) becomes f32
                if t.dtype not in (torch.float16, torch.float32):
                    t = t.to(torch.float32)
                out[name] = t
    return out


def hf_tensors_to_gguf(raw: dict, n_layer: int, tied_hint: bool):
    """Map HF names to GGUF names and apply llama.cpp's Mamba transforms.

    Yields (gguf_name, numpy array in numpy (row-major) order).
    """
    import torch

    tmap = gguf.get_tensor_name_map(ARCH, n_layer)
    mapped: dict[str, np.ndarray] = {}
    for name, t in raw.items():
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"cannot map tensor {name!r} (shape {tuple(t.shape)}); "
                             "in_proj/out_proj biases (use_bias=True) have no llama.cpp tensor")
        if name.endswith(".A_log"):
            # A = -exp(A_log), computed by torch in the tensor's dtype as llama.cpp does
            t = -torch.exp(t)
        if re.fullmatch(r"blk\.\d+\.ssm_conv1d\.weight", new):
            # HF [d_inner, 1, d_conv] -> [d_inner, d_conv]  (ggml ne = {d_conv, d_inner})
            t = t.squeeze()
            if t.dim() == 1:  # d_inner == 1 or d_conv == 1 would over-squeeze
                raise SystemExit(f"{name}: degenerate conv1d shape")
        if new in mapped:
            raise SystemExit(f"two tensors map to {new}")
        mapped[new] = t.contiguous().numpy()

    emb = mapped.get("token_embd.weight")
    if emb is None:
        raise SystemExit("no token embedding in checkpoint")
    if "output.weight" in mapped:
        out = mapped["output.weight"]
        if out.shape == emb.shape and out.dtype == emb.dtype and np.array_equal(out, emb):
            log("output.weight is identical to token_embd.weight: omitted (tied)")
            del mapped["output.weight"]
    elif not tied_hint:
        raise SystemExit("config says tie_word_embeddings=false but there is no lm_head.weight")

    def order(n: str):
        m = re.match(r"blk\.(\d+)\.(.*)", n)
        if m:
            return (1, int(m.group(1)), BLOCK_ORDER.index(m.group(2)) if m.group(2) in BLOCK_ORDER else 99, n)
        return ({"token_embd.weight": 0, "output_norm.weight": 2, "output.weight": 3}.get(n, 4), 0, 0, n)

    for n in sorted(mapped, key=order):
        yield n, mapped[n]


BLOCK_ORDER = [
    "attn_norm.weight", "ssm_in.weight", "ssm_conv1d.weight", "ssm_conv1d.bias",
    "ssm_x.weight", "ssm_dt.weight", "ssm_dt.bias", "ssm_a", "ssm_d", "ssm_out.weight",
]


def choose_type(name: str, data: np.ndarray, want: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """llama.cpp's convert_hf_to_gguf.py rules, restricted to the Mamba tensors."""
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if re.fullmatch(r"blk\.\d+\.ssm_conv1d\.weight", name) or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return want


# --------------------------------------------------------------------------- tokenizer

def detect_pre(tok: dict) -> str:
    """tokenizer.ggml.pre for a byte-level BPE tokenizer.json."""
    pre = tok.get("pre_tokenizer") or {}
    pts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(pts) == 1 and pts[0].get("type") == "ByteLevel" and pts[0].get("use_regex", True):
        if pts[0].get("add_prefix_space"):
            log("warning: ByteLevel add_prefix_space=true; llama.cpp's gpt-2 pre-tokenizer does not add one")
        return "gpt-2"
    raise SystemExit("unrecognised pre-tokenizer in tokenizer.json "
                     f"({json.dumps(pre)[:200]}...); pass --tokenizer-pre NAME")


def looks_special(text: str) -> bool:
    # same heuristic as llama.cpp's does_token_look_special()
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def build_vocab(model_dir: Path, n_vocab: int, pre_override: str | None):
    tj = model_dir / "tokenizer.json"
    if not tj.is_file():
        raise SystemExit(f"{tj} not found (only byte-level BPE tokenizer.json is supported)")
    tok = json.loads(tj.read_text(encoding="utf-8"))
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise SystemExit(f"tokenizer model type {model.get('type')!r} is not BPE")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    for i, a in added.items():
        vocab.setdefault(a["content"], i)
    rev = {i: t for t, i in vocab.items()}
    if len(rev) != len(vocab):
        raise SystemExit("tokenizer.json maps two tokens to one id")
    if max(rev) >= n_vocab:
        raise SystemExit(f"tokenizer has id {max(rev)} but the embedding has only {n_vocab} rows")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = rev[i]
        if i in added:
            if added[i].get("special") or looks_special(t):
                types.append(gguf.TokenType.CONTROL)
            else:
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    pre = pre_override or detect_pre(tok)
    n_pad = sum(1 for t in types if t == gguf.TokenType.UNUSED)
    return tokens, types, pre, n_pad


# --------------------------------------------------------------------------- main

def convert(model_dir: Path, outfile: Path, outtype: str, name: str | None = None,
            tokenizer_pre: str | None = None) -> dict:
    hp = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    archs = hp.get("architectures") or ["MambaForCausalLM"]
    if not any(a in ("MambaForCausalLM", "MambaLMHeadModel") for a in archs):
        raise SystemExit(f"unsupported architectures {archs}")
    if hp.get("model_type") == "falcon_mamba":
        raise SystemExit("falcon_mamba (dt_b_c_rms) is not handled by this script")
    if hp.get("use_bias"):
        raise SystemExit("use_bias=True: in_proj/out_proj biases have no llama.cpp tensor")

    ftype, want = OUTTYPES[outtype]
    d_model = find_hparam(hp, ["hidden_size", "d_model"])
    n_layer = find_hparam(hp, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
    d_conv = find_hparam(hp, ["conv_kernel", "d_conv"], 4)
    d_inner = find_hparam(hp, ["intermediate_size", "d_inner"], None)
    if d_inner is None:
        d_inner = int(hp.get("expand", 2) * d_model)
    d_state = find_hparam(hp, ["state_size", "d_state"], 16)
    dt_rank = find_hparam(hp, ["time_step_rank", "dt_rank"], "auto")
    if dt_rank == "auto":
        dt_rank = -(d_model // -16)
    eps = find_hparam(hp, ["layer_norm_epsilon", "rms_norm_eps"], 1e-5)
    tied = bool(hp.get("tie_word_embeddings", True))
    if d_inner != 2 * d_model:
        log(f"warning: d_inner={d_inner} != 2*d_model={2 * d_model}: llama.cpp refuses to load this "
            "(\"only an expansion factor of 2 is supported for now\"); tinystate does not")

    raw = load_tensors(model_dir)
    tensors = list(hf_tensors_to_gguf(raw, n_layer, tied))
    n_vocab = dict(tensors)["token_embd.weight"].shape[0]

    # shape checks against the hyper-parameters (ggml ne order in comments)
    expect = {"token_embd.weight": (n_vocab, d_model), "output_norm.weight": (d_model,),
              "output.weight": (n_vocab, d_model)}
    for b in range(n_layer):
        expect.update({
            f"blk.{b}.attn_norm.weight": (d_model,),
            f"blk.{b}.ssm_in.weight": (2 * d_inner, d_model),          # ne {d_model, 2*d_inner}
            f"blk.{b}.ssm_conv1d.weight": (d_inner, d_conv),           # ne {d_conv, d_inner}
            f"blk.{b}.ssm_conv1d.bias": (d_inner,),
            f"blk.{b}.ssm_x.weight": (dt_rank + 2 * d_state, d_inner),  # ne {d_inner, dt_rank+2*d_state}
            f"blk.{b}.ssm_dt.weight": (d_inner, dt_rank),              # ne {dt_rank, d_inner}
            f"blk.{b}.ssm_dt.bias": (d_inner,),
            f"blk.{b}.ssm_a": (d_inner, d_state),                      # ne {d_state, d_inner}
            f"blk.{b}.ssm_d": (d_inner,),
            f"blk.{b}.ssm_out.weight": (d_model, d_inner),             # ne {d_inner, d_model}
        })
    for n, d in tensors:
        if n not in expect:
            raise SystemExit(f"unexpected tensor {n}")
        if tuple(d.shape) != expect[n]:
            raise SystemExit(f"{n}: shape {tuple(d.shape)} != expected {expect[n]}")
    missing = [n for n in expect if n not in dict(tensors) and n != "output.weight"
               and not n.endswith("ssm_conv1d.bias")]
    if missing:
        raise SystemExit(f"missing tensors: {missing}")
    if not any(n.endswith("ssm_conv1d.bias") for n, _ in tensors):
        log("warning: no conv1d bias (use_conv_bias=false): llama.cpp requires blk.N.ssm_conv1d.bias")

    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[ARCH])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or model_dir.resolve().name)
    w.add_size_label(gguf.size_label(sum(d.size for _, d in tensors), 0, 0, 0))
    # hyper-parameters, in llama.cpp's MambaModel.set_gguf_parameters order
    w.add_context_length(2 ** 20)  # arbitrary, as llama.cpp
    w.add_embedding_length(d_model)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(n_layer)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_layer_norm_rms_eps(eps)
    w.add_ssm_dt_b_c_rms(False)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, pre, n_pad = build_vocab(model_dir, n_vocab, tokenizer_pre)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)

    counts: dict[str, int] = {}
    n_params = 0
    width = max(len(n) for n, _ in tensors) + 1
    for n, data in tensors:
        qt = choose_type(n, data, want)
        try:
            q = gguf.quants.quantize(data, qt)
        except gguf.QuantError as e:
            log(f"  {n}: {e}, falling back to F16")
            qt = gguf.GGMLQuantizationType.F16
            q = gguf.quants.quantize(data, qt)
        ne = ", ".join(str(x) for x in reversed(data.shape))
        log(f"{n + ',':<{width}} {str(data.dtype):>7} --> {qt.name:<5} ne = {{{ne}}}")
        w.add_tensor(n, q, raw_dtype=qt)
        counts[qt.name] = counts.get(qt.name, 0) + 1
        n_params += data.size

    outfile.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file(path=outfile)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    summary = {
        "outfile": str(outfile), "bytes": outfile.stat().st_size, "outtype": outtype,
        "tensors": len(tensors), "params": n_params, "types": counts,
        "n_vocab": n_vocab, "tokenizer_tokens": n_vocab - n_pad, "pad_tokens": n_pad,
        "tokenizer_pre": pre, "tied": "output.weight" not in dict(tensors),
        "d_model": d_model, "n_layer": n_layer, "d_inner": d_inner, "d_state": d_state,
        "d_conv": d_conv, "dt_rank": dt_rank, "eps": eps,
        "special": dict(special.special_token_ids), "merges": len(special.merges),
    }
    log(f"wrote {outfile}: {summary['bytes']} bytes, {len(tensors)} tensors, {n_params} params, "
        f"types {counts}, vocab {n_vocab} ({n_pad} [PAD]), pre={pre}, "
        f"{'tied' if summary['tied'] else 'untied'} output, special {summary['special']}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--outfile", type=Path, required=True)
    ap.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16")
    ap.add_argument("--name", default=None)
    ap.add_argument("--tokenizer-pre", default=None)
    a = ap.parse_args(argv)
    convert(a.model_dir, a.outfile, a.outtype, a.name, a.tokenizer_pre)
    return 0


if __name__ == "__main__":
    sys.exit(main())
