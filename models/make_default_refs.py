#!/usr/bin/env python3
"""llama.cpp's greedy continuations of the model card's prompts on the shipped default model.

usage: python3 models/make_default_refs.py [--model models/default-q8_0.gguf] [-n 32]
output: models/fixtures/default-greedy-llamacpp.json — for each prompt in models/train/eval.py's
PROMPTS: the prompt's token ids as llama.cpp tokenises it (no BOS, as the GGUF asks) and the n
tokens llama.cpp picks greedily, one eval per token, 1 thread. The engine test
engine/tests/default_model.rs checks that tinystate tokenises and continues identically.

Needs llama-cpp-python built without AMX (see models/requirements.txt). Deterministic: rerunning
gives the same file.
"""
import argparse
import json
import sys
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "train"))
from eval import PROMPTS  # noqa: E402  (the model card's prompt list)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "default-q8_0.gguf"))
    p.add_argument("-n", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "fixtures/default-greedy-llamacpp.json"))
    a = p.parse_args()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=512, n_threads=1, n_threads_batch=1,
                          logits_all=True, verbose=False)
    cases = []
    for text in PROMPTS:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(a.n):
            t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(t)
            llm.eval([t])
        cases.append({"prompt": text, "prompt_ids": ids, "greedy": out,
                      "text": llm.detokenize(out).decode("utf-8", "replace")})
        print(f"{text!r} -> {cases[-1]['text']!r}", file=sys.stderr)
    Path(a.out).write_text(json.dumps({"model": Path(a.model).name, "n": a.n, "cases": cases},
                                      indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
