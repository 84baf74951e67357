#!/usr/bin/env python3
"""Export the trained Mamba model to GGUF (through models/convert_hf_to_gguf.py) and check it.

Purpose
    Turn the folder written by train.py into a complete Hugging Face folder
    (one model.safetensors, config.json, tokenizer.json, tokenizer_config.json),
    check that transformers' MambaForCausalLM loads it and agrees with
    mamba.MambaLM, convert it with the engine's converter to GGUF, and read
    the GGUF back with the ``gguf`` package (architecture, tensor count and
    types, tokenizer metadata).  If llama-cpp-python is installed, also let
    llama.cpp load the file and generate greedily from the model card's prompts.

Usage
    python models/train/export.py --hf models/train/work/hf --data models/train/work/data \
        --q8 models/default-q8_0.gguf [--f16 PATH]

    Needs: torch, safetensors, gguf, numpy; transformers for the load check
    (skipped with a note if absent); llama_cpp optional.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import eval as ev  # noqa: E402
import mamba  # noqa: E402

CONVERTER = HERE.parent / "convert_hf_to_gguf.py"


def complete_folder(hf: Path, data: Path) -> None:
    mamba.merge_shards(hf)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(data / f, hf / f)


def check_transformers(hf: Path) -> str:
    try:
        from transformers import MambaForCausalLM
    except ImportError:
        return "transformers not installed: load check skipped"
    ref, info = MambaForCausalLM.from_pretrained(hf, output_loading_info=True, dtype=torch.float32)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"from_pretrained: {bad}"
    ours = mamba.load_hf(hf)
    ids = torch.randint(1, ours.args.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (ours(ids) - ref.eval()(ids).logits).abs().max().item()
    assert err < 1e-3, err
    return f"MambaForCausalLM.from_pretrained loads it; max |logit diff| vs mamba.MambaLM {err:.1e}"


def convert(hf: Path, out: Path, outtype: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(CONVERTER), str(hf), "--outfile", str(out),
                    "--outtype", outtype, "--name", "tinystate-default"], check=True)


def check_gguf(path: Path) -> dict:
    import gguf
    r = gguf.GGUFReader(str(path))
    kv = {f.name: f for f in r.fields.values()}

    def val(name):
        f = kv[name]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]

    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    info = {"file": str(path), "bytes": path.stat().st_size, "mib": round(path.stat().st_size / 2**20, 2),
            "architecture": val("general.architecture"), "tensors": len(r.tensors), "types": types,
            "n_tokens": len(kv["tokenizer.ggml.tokens"].data), "tokenizer_pre": val("tokenizer.ggml.pre"),
            "block_count": int(val("mamba.block_count")), "embedding_length": int(val("mamba.embedding_length")),
            "ssm_inner_size": int(val("mamba.ssm.inner_size")), "ssm_state_size": int(val("mamba.ssm.state_size"))}
    assert info["architecture"] == "mamba" and info["tokenizer_pre"] == "gpt-2"
    return info


def check_llama_cpp(path: Path, n: int = 32) -> list[dict] | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "llama_cpp not installed: llama.cpp generation check skipped"
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    outs = []
    for p in ev.PROMPTS:
        r = llm.create_completion(p, max_tokens=n, temperature=0.0, top_k=1)
        outs.append({"prompt": p, "llama_cpp_greedy": r["choices"][0]["text"]})
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, default=HERE / "work" / "hf")
    ap.add_argument("--data", type=Path, default=HERE / "work" / "data")
    ap.add_argument("--q8", type=Path, default=HERE.parent / "default-q8_0.gguf")
    ap.add_argument("--f16", type=Path, default=None, help="also write an F16 GGUF here")
    ap.add_argument("--report", type=Path, default=None)
    a = ap.parse_args(argv)
    complete_folder(a.hf, a.data)
    rep = {"transformers": check_transformers(a.hf)}
    print(rep["transformers"], flush=True)
    outs = [(a.q8, "q8_0")] + ([(a.f16, "f16")] if a.f16 else [])
    for path, t in outs:
        convert(a.hf, path, t)
        rep[t] = check_gguf(path)
        print(json.dumps(rep[t]), flush=True)
    rep["llama_cpp"] = check_llama_cpp(a.q8)
    print(json.dumps(rep["llama_cpp"], indent=1, ensure_ascii=False), flush=True)
    if a.report:
        a.report.write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
