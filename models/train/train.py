#!/usr/bin/env python3
"""Train tinystate's default Mamba-1 model, or its same-size transformer baseline.

Purpose
    One script for both models of the model card, so they see the same data in
    the same order with the same optimiser and schedule:
      * random windows of SEQ+1 tokens from train.npy (seeded generator),
      * AdamW (fused on CUDA), betas (0.9, 0.95), weight decay 0.1 on matrices,
        gradient clipping at 1.0, bf16 autocast on CUDA,
      * linear warm-up, then cosine decay to 10 % of the peak learning rate,
      * every EVAL_EVERY steps the loss on the *valid* split; the weights with
        the best valid loss are the ones saved and evaluated (the test split is
        only touched once, at the end).

    --steps N fixes the run length.  --time-budget S instead times the steps
    from 10 to the end of the learning-rate warm-up and sets N so that training
    takes about S seconds; N is printed and written to the report, and since
    warm-up learning rates do not depend on N, a rerun with --steps N repeats
    the same run.  The transformer baseline is trained with --steps
    set to the Mamba run's N: the same token budget.

Usage (on a machine with a CUDA GPU; --device cpu and a tiny config for a smoke test)
    python models/train/train.py --arch mamba --data models/train/work/data \
        --out models/train/work/hf --time-budget 330 --report report.json
    python models/train/train.py --arch gpt --data models/train/work/data \
        --steps N --report report.json

Output
    --out DIR (mamba): config.json + model safetensors (float16 matrices,
      float32 small tensors; shards of at most 15 MiB), loadable with
      transformers' MambaForCausalLM.from_pretrained after the tokenizer files
      are copied in (export.py does this).
    --out DIR (gpt): gpt.json + model.safetensors (same dtypes).
    --report FILE: JSON merged under the key ARCH: arguments, parameter count,
      steps, tokens, tokens/s, loss curves, valid and test metrics, samples.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval as ev  # noqa: E402
import gpt as gpt_mod  # noqa: E402
import mamba as mamba_mod  # noqa: E402


def build(a):
    if a.arch == "mamba":
        args = mamba_mod.MambaArgs(vocab_size=a.vocab, d_model=a.d_model, n_layer=a.n_layer,
                                   d_state=a.d_state)
        m = mamba_mod.MambaLM(args)
        m.init_weights(a.seed)
        m.set_chunk(a.chunk)
    else:
        args = gpt_mod.GPTArgs(vocab_size=a.vocab, d_model=a.d_model, n_layer=a.n_layer,
                               n_head=a.n_head, d_ff=a.d_ff)
        m = gpt_mod.GPT(args)
        m.init_weights(a.seed)
    return m, args


def param_groups(model, wd: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.dim() < 2 or n.endswith(("A_log", ".D")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, peak: float, floor_frac: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def save_gpt(model, out: Path):
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpt.json").write_text(json.dumps(asdict(model.args), indent=2) + "\n")
    sd = {k: (v.half() if v.dim() == 2 else v.float()).contiguous().cpu()
          for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(out / "model.safetensors"))


def merge_report(path: Path, key: str, rep: dict):
    old = json.loads(path.read_text()) if path.exists() else {}
    old[key] = rep
    path.write_text(json.dumps(old, indent=2, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["mamba", "gpt"], required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    # size (defaults: the shipped model, and its same-size transformer)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layer", type=int, default=None, help="default 16 (mamba) / 8 (gpt)")
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--d-ff", type=int, default=2304)
    ap.add_argument("--chunk", type=int, default=32, help="mamba scan chunk length")
    # run
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds (sets --steps)")
    ap.add_argument("--lr", type=float, default=None, help="default 3e-3 (mamba) / 2e-3 (gpt)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--compile", type=int, default=None, help="1/0; default 1 for mamba on CUDA")
    ap.add_argument("--samples", type=int, default=1, help="1: write sample generations")
    a = ap.parse_args(argv)
    if a.n_layer is None:
        a.n_layer = 16 if a.arch == "mamba" else 8
    if a.lr is None:
        a.lr = 3e-3 if a.arch == "mamba" else 2e-3
    if a.compile is None:
        a.compile = int(a.arch == "mamba" and a.device.startswith("cuda"))
    assert (a.steps is None) != (a.time_budget is None), "give exactly one of --steps / --time-budget"

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = json.loads((a.data / "meta.json").read_text())
    assert meta["vocab_size"] == a.vocab
    train = torch.from_numpy(np.load(a.data / "train.npy").astype(np.int64)).to(a.device)
    valid = np.load(a.data / "valid.npy")
    test = np.load(a.data / "test.npy")
    byte_len = ev.token_byte_lengths(a.data / "tokenizer.json", a.vocab)

    model, margs = build(a)
    model.to(a.device)
    n_params = sum(p.numel() for p in model.parameters())
    if a.arch == "mamba" and a.compile:
        mamba_mod.compile_scan(True)
    elif a.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(param_groups(model, a.wd), lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=cuda)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    gen = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    n_train = train.numel()
    print(f"{a.arch}: {n_params:,} params, {n_train:,} train tokens, "
          f"{a.batch}x{a.seq} = {a.batch * a.seq:,} tokens/step, device {a.device}", flush=True)

    def batch():
        starts = torch.randint(0, n_train - a.seq - 1, (a.batch,), generator=gen)
        idx = starts[:, None] + torch.arange(a.seq + 1)
        return train[idx.to(a.device)]

    def step_fn(lr):
        for gp in opt.param_groups:
            gp["lr"] = lr
        xy = batch()
        with amp:
            logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), xy[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss, gn

    def sync():
        if cuda:
            torch.cuda.synchronize()

    total = a.steps if a.steps is not None else 10**9
    # a --time-budget run is sized from the time of steps [10, warmup): the warm-up
    # learning rates do not depend on the total, so the run equals a --steps N run
    calib = (10, a.warmup)
    assert a.time_budget is None or a.warmup >= 20, "--time-budget needs --warmup >= 20"
    hist, vhist = [], []
    best = (float("inf"), -1, None)
    t_start = time.time()
    t_train = 0.0               # time inside training steps (no evals)
    tok_timed, t_timed = 0, 0.0  # steady-state throughput (after step 10)
    step = 0
    while step < total:
        t0 = time.time()
        try:
            loss, gn = step_fn(lr_at(step, total, a.warmup, a.lr))
        except Exception as e:  # compiled scan failed to build: fall back to eager, same math
            if step == 0 and a.arch == "mamba" and a.compile:
                print(f"torch.compile failed ({type(e).__name__}: {e}); continuing eagerly", flush=True)
                mamba_mod.compile_scan(False)
                a.compile = 0
                continue
            raise
        if step % 10 == 0 or step == total - 1:
            lv = loss.item()
            hist.append((step, round(lv, 4), round(gn.item(), 3)))
            if not math.isfinite(lv):
                raise SystemExit(f"loss is {lv} at step {step}")
        sync()
        dt = time.time() - t0
        t_train += dt
        if step >= calib[0]:
            tok_timed += a.batch * a.seq
            t_timed += dt
        if step == calib[1] - 1 and a.time_budget is not None:
            per = t_timed / (calib[1] - calib[0])
            left = a.time_budget - (time.time() - t_start)
            # each valid evaluation costs about 1.5 steps (forward only, ~100k tokens)
            total = step + 1 + int(left / (per * (1 + 1.5 / a.eval_every)))
            total = max(total, calib[1] + 1)
            print(f"step time {per * 1e3:.1f} ms -> --steps {total}", flush=True)
        if step % 50 == 0:
            print(f"step {step:5d}/{total if total < 10**9 else '?'}  loss {loss.item():.4f}  "
                  f"gnorm {gn.item():.2f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.time() - t_start:6.1f}s", flush=True)
        step += 1
        if step % a.eval_every == 0 or step == total:
            vm = ev.evaluate(model, valid, byte_len, a.seq, a.batch, a.device)
            model.train()
            vhist.append((step, round(vm["nll_per_token"], 4)))
            print(f"  valid @ {step}: nll {vm['nll_per_token']:.4f}  ppl {vm['ppl']:.2f}  "
                  f"bpb {vm['bpb']:.4f}  ({vm['seconds']}s)", flush=True)
            if vm["nll_per_token"] < best[0]:
                best = (vm["nll_per_token"], step,
                        {k: v.detach().clone() for k, v in model.state_dict().items()})

    wall = time.time() - t_start
    model.load_state_dict(best[2])
    tokens = total * a.batch * a.seq
    rep = {
        "arch": a.arch, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "model_args": asdict(margs), "params": n_params,
        "steps": total, "tokens_per_step": a.batch * a.seq, "train_tokens": tokens,
        "epochs": round(tokens / n_train, 3),
        "train_seconds": round(t_train, 1), "wall_seconds": round(wall, 1),
        "tokens_per_second": round(tok_timed / max(t_timed, 1e-9)),
        "best_valid": {"step": best[1], "nll_per_token": best[0]},
        "loss_history": hist, "valid_history": vhist,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__, "compiled": bool(a.compile),
    }
    if cuda:
        rep["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"trained {total} steps, {tokens:,} tokens ({rep['epochs']} epochs) in {wall:.0f}s; "
          f"{rep['tokens_per_second']:,} tokens/s; best valid nll {best[0]:.4f} at step {best[1]}",
          flush=True)
    if a.out:
        if a.arch == "mamba":
            mamba_mod.save_hf(model, a.out)
        else:
            save_gpt(getattr(model, "_orig_mod", model), a.out)
    rep["test"] = ev.evaluate(model, test, byte_len, a.seq, a.batch, a.device)
    print(f"test: {json.dumps(rep['test'])}", flush=True)
    if a.samples:
        rep["samples"] = ev.samples(model, a.data / "tokenizer.json", a.device)
        for s in rep["samples"][:3]:
            print(f"  {s['prompt']!r} -> {s['greedy']!r}", flush=True)
    if a.report:
        merge_report(a.report, a.arch, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
