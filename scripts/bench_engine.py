#!/usr/bin/env python3
"""Engine vs llama.cpp, side by side in one run: decode and prefill tokens/s on the same GGUF files.

usage: scripts/bench_engine.py [--types f32,f16,q8_0] [--threads 1,2] [--runs 3] [--decode 128]
                               [--prefill 256] [--out target/bench] [--binary PATH]

Makes Mamba-130m-shaped files with random weights (d_model 768, 24 layers, vocab 50280) with
models/make_random_mamba.py, builds `tinystate` in release mode, then for every file and thread
count runs `tinystate bench` and llama.cpp (llama-cpp-python, measured the same way: same token
ids, a fresh sequence per repetition) alternately, `--runs` times each in separate processes.
Prints a Markdown table of medians and ratios (ours / llama.cpp) for BENCHMARKS.md.

Needs: pip install numpy gguf llama-cpp-python (built without AMX, see models/requirements.txt).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LLAMA_CPP = r"""
import json, sys, time, llama_cpp
path, threads, n_decode, n_prefill, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(model_path=path, n_ctx=n_prefill + n_decode + 16, n_batch=512, n_ubatch=512,
                      n_threads=threads, n_threads_batch=threads, verbose=False, logits_all=False)
V = llm.n_vocab()
tok = lambda i: 256 + (i * 7919) % (V - 300)
pf, dc = [], []
for _ in range(reps):
    llm.reset()
    ids = [tok(i) for i in range(n_prefill)]
    t = time.perf_counter(); llm.eval(ids); pf.append(n_prefill / (time.perf_counter() - t))
    llm.reset()
    t = time.perf_counter()
    for i in range(n_decode):
        llm.eval([tok(i + 17)])
    dc.append(n_decode / (time.perf_counter() - t))
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"prefill_tok_s_median": med(pf), "decode_tok_s_median": med(dc)}))
"""


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def make_models(out: Path, types):
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for ty in types:
        f = out / f"mamba130m-random-{ty}.gguf"
        if not f.exists():
            print(f"making {f.name}", file=sys.stderr)
            sh([sys.executable, str(ROOT / "models/make_random_mamba.py"), "--d-model", "768",
                "--layers", "24", "--vocab", "50280", "--outtype", ty, str(f)])
        files[ty] = f
    return files


def ours(binary, model, threads, a):
    line = sh([str(binary), "bench", "--model", str(model), "--threads", str(threads),
               "--decode", str(a.decode), "--prefill", str(a.prefill), "--reps", "3"])
    return json.loads(line)


def theirs(model, threads, a):
    line = sh([sys.executable, "-c", LLAMA_CPP, str(model), str(threads), str(a.decode),
               str(a.prefill), "3"])
    return json.loads(line)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default="f32,f16,q8_0")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--prefill", type=int, default=256)
    p.add_argument("--out", default=str(ROOT / "target/bench"))
    p.add_argument("--binary", help="a built `tinystate` to use instead of building one (e.g. on a machine "
                   "without cargo)")
    a = p.parse_args()
    types = a.types.split(",")
    threads = [int(t) for t in a.threads.split(",")]

    if a.binary:
        binary = Path(a.binary).resolve()
    else:
        print("building tinystate (release)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "tinystate"], check=True, cwd=ROOT)
        binary = ROOT / "target/release/tinystate"
    files = make_models(Path(a.out), types)

    rows = []
    kernels = "?"
    for ty in types:
        for th in threads:
            o_pf, o_dc, l_pf, l_dc = [], [], [], []
            for run in range(a.runs):
                o = ours(binary, files[ty], th, a)
                l = theirs(files[ty], th, a)
                kernels = o["kernels"]
                o_pf.append(o["prefill_tok_s_median"]); o_dc.append(o["decode_tok_s_median"])
                l_pf.append(l["prefill_tok_s_median"]); l_dc.append(l["decode_tok_s_median"])
                print(f"{ty} t{th} run {run}: ours {o} llama.cpp {l}", file=sys.stderr)
            m = statistics.median
            rows.append((ty, th, m(o_dc), m(l_dc), m(o_pf), m(l_pf)))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
          f"engine kernels: {kernels}. Mamba-130m shape, random weights; decode {a.decode} tokens, "
          f"prefill {a.prefill} tokens; medians of {a.runs} runs × 3 repetitions.\n")
    print("| weights | threads | decode tok/s (ours) | decode tok/s (llama.cpp) | ratio | "
          "prefill tok/s (ours) | prefill tok/s (llama.cpp) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for ty, th, od, ld, op, lp in rows:
        print(f"| {ty.upper()} | {th} | {od:.1f} | {ld:.1f} | **{od / ld:.2f}×** | {op:.1f} | {lp:.1f} | "
              f"**{op / lp:.2f}×** |")


if __name__ == "__main__":
    main()
