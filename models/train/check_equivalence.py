#!/usr/bin/env python3
"""Check the training Mamba against Hugging Face's reference implementation (CPU).

Purpose
    Before any GPU time is spent, prove on CPU that
      1. the chunked SelectiveScan equals the plain sequential recurrence, in
         value and in gradient (float64, torch.autograd.gradcheck and a direct
         comparison against autograd through the sequential loop);
      2. mamba.MambaLM gives the same logits as transformers' MambaForCausalLM
         (its slow, sequential torch path) for the same weights, on a tiny
         random config, and a folder written by mamba.save_hf loads with
         MambaForCausalLM.from_pretrained without missing or unexpected keys;
      3. if the tokenizer has been trained (work/data/tokenizer.json), a tiny
         model converted by models/convert_hf_to_gguf.py (F32) and read back by
         mamba.load_gguf gives the same logits (the GGUF names and the
         ssm_a = -exp(A_log) convention round-trip).

Usage
    python models/train/check_equivalence.py        (needs torch, transformers, safetensors)

Exit status 0 and "ok" lines when everything agrees.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mamba  # noqa: E402


def check_scan() -> None:
    torch.manual_seed(0)
    b, L, D, N = 2, 37, 5, 3
    x = torch.randn(b, L, D, dtype=torch.float64, requires_grad=True)
    dt = (torch.rand(b, L, D, dtype=torch.float64) * 0.5 + 0.01).requires_grad_()
    A = (-torch.rand(D, N, dtype=torch.float64) * 3 - 0.1).requires_grad_()
    Bm = torch.randn(b, L, N, dtype=torch.float64, requires_grad=True)
    C = torch.randn(b, L, N, dtype=torch.float64, requires_grad=True)
    for T in (1, 4, 8, 37, 64):
        y = mamba.selective_scan(x, dt, A, Bm, C, chunk=T)
        yr = mamba.selective_scan_ref(x, dt, A, Bm, C)
        assert torch.allclose(y, yr, atol=1e-10), (T, (y - yr).abs().max())
        w = torch.randn_like(y)
        g = torch.autograd.grad((y * w).sum(), (x, dt, A, Bm, C))
        gr = torch.autograd.grad((yr * w).sum(), (x, dt, A, Bm, C))
        for a_, b_ in zip(g, gr):
            assert torch.allclose(a_, b_, atol=1e-9), (T, (a_ - b_).abs().max())
    xs = [t[:, :12].detach().clone().requires_grad_() for t in (x, dt)]
    Bs, Cs = (t[:, :12].detach().clone().requires_grad_() for t in (Bm, C))
    assert torch.autograd.gradcheck(lambda *a: mamba.SelectiveScan.apply(*a, 4),
                                    (xs[0], xs[1], A, Bs, Cs))
    print("ok: chunked selective scan == sequential recurrence (values, gradients, gradcheck)")


def check_hf() -> None:
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    a = mamba.MambaArgs(vocab_size=96, d_model=32, n_layer=3, d_state=8)
    ours = mamba.MambaLM(a)
    ours.init_weights(seed=1)
    with torch.no_grad():  # make every parameter non-trivial
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        mamba.save_hf(ours, d, half=False)
        hf, info = MambaForCausalLM.from_pretrained(d, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, bad
        # a sharded folder written with tiny shards loads the same
        mamba.save_hf(ours, d / "sharded", max_shard_bytes=20000, half=False)
        assert len(list((d / "sharded").glob("*.safetensors"))) > 1
        again = mamba.load_hf(d / "sharded")
        mamba.merge_shards(d / "sharded")
        hf2 = MambaForCausalLM.from_pretrained(d / "sharded")
    assert isinstance(hf.config, MambaConfig)
    hf.eval()
    hf2.eval()
    ids = torch.randint(0, a.vocab_size, (2, 45))
    with torch.no_grad():
        ref = hf(ids).logits
        for T in (1, 8, 16, 64):
            ours.set_chunk(T)
            out = ours(ids)
            err = (out - ref).abs().max().item()
            assert err < 1e-4, (T, err)
        assert (again(ids) - ref).abs().max().item() < 1e-4
        assert (hf2(ids).logits - ref).abs().max().item() < 1e-6
        # greedy continuation through HF's recurrent cache equals ours token by token
        gen = hf.generate(ids[:1, :10], max_new_tokens=12, do_sample=False)
        seq = ids[:1, :10]
        for _ in range(12):
            nxt = ours(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        assert torch.equal(gen, seq), (gen, seq)
    print(f"ok: MambaLM logits == HF MambaForCausalLM (max |diff| {err:.2e}); "
          "save_hf loads with from_pretrained (no missing/unexpected keys); greedy generate matches")


def check_gguf() -> None:
    import shutil
    import subprocess

    here = Path(__file__).resolve().parent
    tok = here / "work" / "data"
    if not (tok / "tokenizer.json").exists():
        print("skip: GGUF round trip (run train_tokenizer.py first)")
        return
    a = mamba.MambaArgs(vocab_size=8192, d_model=32, n_layer=2, d_state=8)
    ours = mamba.MambaLM(a)
    ours.init_weights(seed=2)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        mamba.save_hf(ours, d / "hf", half=False)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tok / f, d / "hf" / f)
        subprocess.run([sys.executable, str(here.parent / "convert_hf_to_gguf.py"), str(d / "hf"),
                        "--outfile", str(d / "m.gguf"), "--outtype", "f32"],
                       check=True, capture_output=True)
        back = mamba.load_gguf(d / "m.gguf")
    ids = torch.randint(0, a.vocab_size, (2, 40))
    with torch.no_grad():
        err = (back(ids) - ours(ids)).abs().max().item()
    assert err < 1e-5, err
    print(f"ok: save_hf -> convert_hf_to_gguf.py (f32) -> load_gguf round trip (max |diff| {err:.1e})")


if __name__ == "__main__":
    torch.set_num_threads(2)
    check_scan()
    check_hf()
    check_gguf()
