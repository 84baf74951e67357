#!/usr/bin/env python3
"""Evaluate a trained model on the held-out split and write sample generations.

Purpose
    The numbers in models/README.md come from this script: per-token perplexity
    and bits per byte on the *test* split (never trained on, never used to pick
    a checkpoint), and greedy plus seeded-sampling continuations of a fixed
    list of prompts.  It runs on a GPU or, more slowly, on a CPU.

Protocol (identical for every model, so Mamba and transformer are comparable)
    * The test token stream (test.npy) is cut into non-overlapping windows of
      SEQ+1 tokens (the last, shorter window too); within a window every token
      after the first is predicted from the tokens before it in that window
      (no state is carried between windows, no window overlaps).
    * nll/token = mean cross-entropy in nats over all predicted tokens;
      ppl = exp(nll/token); bpb = total nats / ln 2 / total UTF-8 bytes of the
      predicted tokens (the <|endoftext|> separator counts 0 bytes).
    * Greedy: argmax, 64 new tokens.  Sampled: temperature 0.8, top-k 40,
      torch.Generator seeded with 1234 per prompt, 64 new tokens.

Usage
    python models/train/eval.py --model models/train/work/hf --data models/train/work/data \
        [--split test] [--seq 1024] [--batch 8] [--device cpu|cuda] [--out results.json]

    --model is a Mamba HF folder (config.json + *.safetensors, as written by
    train.py / mamba.save_hf), a llama.cpp ``mamba`` GGUF file such as the
    shipped models/default-q8_0.gguf (dequantised to float32), or a transformer
    folder (gpt.json + model.safetensors).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt as gpt_mod  # noqa: E402
import mamba as mamba_mod  # noqa: E402

PROMPTS = [
    "Once upon a time, there was",
    "It is a truth universally acknowledged, that",
    "My fellow Americans, tonight",
    "The most important thing in life is",
    "To be, or not to be,",
    "In the beginning",
]
NEW_TOKENS = 64
SEED = 1234
TEMPERATURE, TOP_K = 0.8, 40


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by ByteLevel BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_byte_lengths(tokenizer_json: Path, vocab_size: int) -> np.ndarray:
    """UTF-8 byte length of every token id; special tokens count 0."""
    tj = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    char_ok = set(bytes_to_unicode().values())
    lens = np.zeros(vocab_size, dtype=np.int64)
    special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special")}
    for t, i in tj["model"]["vocab"].items():
        if i < vocab_size and i not in special:
            assert all(c in char_ok for c in t), t
            lens[i] = len(t)  # one printable char per byte
    return lens


def load_model(path: Path):
    """Return (model, kind) from a Mamba HF folder, a mamba GGUF file or a transformer folder."""
    if path.suffix == ".gguf":
        return mamba_mod.load_gguf(path), "mamba"
    if (path / "gpt.json").exists():
        from safetensors.torch import load_file
        a = gpt_mod.GPTArgs(**json.loads((path / "gpt.json").read_text()))
        m = gpt_mod.GPT(a)
        sd = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
        sd["lm_head.weight"] = sd["embed.weight"]
        m.load_state_dict(sd)
        return m, "transformer"
    return mamba_mod.load_hf(path), "mamba"


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, ids: np.ndarray, byte_len: np.ndarray, seq: int = 1024, batch: int = 8,
             device: str = "cpu", pad_to_batch: bool = True, verbose: bool = False) -> dict:
    """Held-out metrics under the protocol in the module docstring."""
    model.eval()
    ids_t = torch.from_numpy(ids.astype(np.int64))
    starts = list(range(0, len(ids) - 1, seq))
    total_nll, total_tok, total_bytes = 0.0, 0, 0
    t0 = time.time()
    full = [s for s in starts if s + seq + 1 <= len(ids)]
    tail = [s for s in starts if s + seq + 1 > len(ids)]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[s] for s in tail]
    for gi, g in enumerate(groups):
        if verbose and gi % 4 == 0:
            print(f"  eval batch {gi}/{len(groups)}  {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        n = len(ids_t[g[0]:g[0] + seq + 1])              # seq+1, or less for the tail window
        rows = torch.stack([ids_t[s:s + n] for s in g])
        real = rows.shape[0]
        if pad_to_batch:  # one input shape for every call (compiled kernels); padding is never scored
            rows = F.pad(rows, (0, seq + 1 - n))
            rows = torch.cat([rows, rows[:1].expand(batch - real, -1)])
        rows = rows.to(device)
        with _autocast(device):
            logits = model(rows[:, :-1])
        logits, rows = logits[:real, :n - 1], rows[:real, :n]
        nll = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="none")
        nll = nll.view(real, -1)
        tgt = rows[:, 1:].cpu().numpy()
        total_nll += nll.double().sum().item()
        total_tok += tgt.size
        total_bytes += int(byte_len[tgt].sum())
    nll_tok = total_nll / total_tok
    return {"tokens": total_tok, "bytes": total_bytes, "nll_per_token": nll_tok,
            "ppl": math.exp(nll_tok), "bpb": total_nll / math.log(2) / total_bytes,
            "seq": seq, "seconds": round(time.time() - t0, 2)}


@torch.no_grad()
def generate(model, tok, prompt: str, n: int = NEW_TOKENS, greedy: bool = True, seed: int = SEED,
             device: str = "cpu") -> str:
    """Continuation of `prompt` (full recompute per token: simple, model-agnostic)."""
    model.eval()
    ids = torch.tensor([tok.encode(prompt).ids], device=device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(n):
        with _autocast(device):
            logits = model(ids)[0, -1].float().cpu()
        if greedy:
            nxt = int(logits.argmax())
        else:
            v, i = torch.topk(logits / TEMPERATURE, TOP_K)
            nxt = int(i[torch.multinomial(torch.softmax(v, -1), 1, generator=gen)])
        if nxt == 0:  # <|endoftext|>
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], 1)
    return tok.decode(out)


def samples(model, tokenizer_json: Path, device: str = "cpu", n: int = NEW_TOKENS) -> list[dict]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    if hasattr(model, "set_chunk"):
        model.set_chunk(8)  # short sequences: fewer sequential scan steps (same math)
    return [{"prompt": p, "greedy": generate(model, tok, p, n, True, device=device),
             "sampled": generate(model, tok, p, n, False, device=device)} for p in PROMPTS]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "work" / "data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-samples", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model, kind = load_model(a.model)
    model.to(a.device)
    meta = json.loads((a.data / "meta.json").read_text())
    ids = np.load(a.data / f"{a.split}.npy")
    res = {"model": str(a.model), "kind": kind, "params": sum(p.numel() for p in model.parameters()),
           "split": a.split, "device": a.device}
    res["metrics"] = evaluate(model, ids, token_byte_lengths(a.data / "tokenizer.json", meta["vocab_size"]),
                              a.seq, a.batch, a.device, verbose=True)
    print(json.dumps(res, indent=2), flush=True)
    if not a.no_samples:
        res["samples"] = samples(model, a.data / "tokenizer.json", a.device)
        for s in res["samples"]:
            print(f"\n--- {s['prompt']!r}\n[greedy]  {s['prompt']}{s['greedy']}\n[sampled] {s['prompt']}{s['sampled']}")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
