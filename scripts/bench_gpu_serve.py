#!/usr/bin/env python3
"""The wasi-nn GPU backend through the real HTTP path: `tinystate serve --model NAME=FILE --backend gpu`
with the nn guest, single-stream decode tokens/s and aggregate tokens/s at several numbers of
concurrent streams, each with its fraction of the bandwidth bound; the PyTorch CUDA-graph peer in
the same run when asked.

usage: scripts/bench_gpu_serve.py MODEL.gguf [MODEL.gguf …] [--binary target/release/tinystate]
           [--guest NN.wasm] [--concurrency 1,8,64,256] [--max-tokens 64] [--rounds 2] [--hey hey]
           [--peer PATH.py] [--serve-arg=ARG …]

The binary must embed an nn guest built for the models' tokenizer (host/build.rs builds it from
`TINYSTATE_MODEL`; the server refuses a model whose tokenizer differs). For each model: one
server; single-stream decode is a streamed greedy completion of 256 tokens (`ignore_eos`), timed
between its first and last token events; then for each concurrency C, `hey` sends C·rounds
non-streamed completions of `--max-tokens` tokens (`ignore_eos`) with C clients, and aggregate
tokens/s is completed requests × max-tokens ÷ wall time (prefill of the short prompt included).
Bandwidth bound: a batched decode step reads every weight once, so B streams cannot exceed
B × 4.2 TB/s ÷ (weight bytes) tokens/s (4.2 TB/s: the read bandwidth measured on the H200
through wgpu, DESIGN.md). Prints Markdown for BENCHMARKS.md.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serve  # noqa: E402  (scripts/ is not a package)

PEAK = 4.2e12
ROOT = Path(__file__).resolve().parent.parent


# The server's histograms the script reads: rows per GPU decode step, then the batcher's timings
# (seconds) and the time to instantiate a guest.
HISTOGRAMS = ("tinystate_nn_batch_size", "tinystate_nn_step_seconds", "tinystate_nn_linger_seconds",
              "tinystate_nn_idle_seconds", "tinystate_nn_turnaround_seconds",
              "tinystate_nn_queue_seconds", "tinystate_instantiate_seconds")


def batch_stats(host, port):
    """{name_sum / name_count: value} of the server's HISTOGRAMS."""
    c = http.client.HTTPConnection(host, port)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    vals = {}
    for line in text.splitlines():
        for k in HISTOGRAMS:
            for part in ("_sum", "_count"):
                if line.startswith(k + part + " ") or line.startswith(k + part + "{"):
                    vals[k + part] = float(line.split()[-1])
    return vals


def mean_delta(a, b, k):
    """Mean of histogram k over what was observed between snapshots a and b."""
    n = b.get(k + "_count", 0) - a.get(k + "_count", 0)
    return (b.get(k + "_sum", 0) - a.get(k + "_sum", 0)) / max(n, 1), n


def weight_bytes(path):
    """Bytes of the tensors a decode step reads: every tensor but the embedding table's unused rows
    (the embedding is read one row per token; when tied it is also the output matrix, read whole)."""
    sys.path.insert(0, str(ROOT / ".pydeps"))
    import gguf  # gguf-py, the llama.cpp writer/reader

    r = gguf.GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--binary", default=str(ROOT / "target/release/tinystate"))
    p.add_argument("--guest", help="an nn guest built for the models' tokenizer "
                   "(TINYSTATE_MODEL=MODEL.gguf guest/build.sh nn), if the binary's is not")
    p.add_argument("--concurrency", default="1,8,64,256")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--hey", default="hey")
    p.add_argument("--peer", help="shared/peers/torch_mamba_graph.py, run after ours")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="one more argument for `tinystate serve`, repeatable (--serve-arg=--no-fused-step)")
    a = p.parse_args()
    concs = [int(c) for c in a.concurrency.split(",")]
    rows = []
    for model in a.models:
        wb = weight_bytes(model)
        server, host, port = bench_serve.start_server(
            # Slots beyond the clients: a client's next request may arrive before the slot of its
            # last one has been reset and freed by the batcher.
            ["--model", f"bench={model}", "--backend", "gpu", "--nn-slots", str(max(concs) + 16),
             "--max-concurrency", str(max(concs) + 8), "--timeout", "600s",
             *(["--guest", a.guest] if a.guest else []), *a.serve_arg], binary=a.binary)
        try:
            single = bench_serve.guest_decode(host, port, "bench", 256)
            print(f"{Path(model).name}: single stream {single:.1f} tok/s", file=sys.stderr)
            for c in concs:
                n = c * a.rounds
                m0 = batch_stats(host, port)
                t0 = time.perf_counter()
                rps, p50, p99, codes = bench_serve.hey(host, port, "bench", n, c, a.max_tokens, a.hey)
                wall = time.perf_counter() - t0
                m1 = batch_stats(host, port)
                mean_batch, steps = mean_delta(m0, m1, "tinystate_nn_batch_size")
                step_s, _ = mean_delta(m0, m1, "tinystate_nn_step_seconds")
                linger_s, lingers = mean_delta(m0, m1, "tinystate_nn_linger_seconds")
                print(f"  C={c}: {steps:.0f} steps in {wall:.2f} s ({wall / max(steps, 1) * 1e3:.2f} ms per "
                      f"step cycle): GPU step {step_s * 1e3:.2f} ms, linger {linger_s * 1e3:.2f} ms "
                      f"({lingers:.0f} lingers)", file=sys.stderr)
                # Per-turn and per-compute means (ms) and totals over the run (s): where a cycle goes.
                parts = []
                for k in HISTOGRAMS[3:]:
                    mean, count = mean_delta(m0, m1, k)
                    parts.append(f"{k.removeprefix('tinystate_').removesuffix('_seconds')} "
                                 f"{mean * 1e3:.3f} ms x {count:.0f} = {mean * count:.2f} s")
                print("    " + "; ".join(parts), file=sys.stderr)
                ok = codes.get("200", 0)
                agg = ok * a.max_tokens / wall
                bound = c * PEAK / wb
                rows.append((Path(model).name, wb, c, agg, agg / bound, p50, p99, codes, single, mean_batch))
                print(f"  C={c}: {agg:.0f} tok/s, mean rows per step {mean_batch:.1f}, codes {codes}",
                      file=sys.stderr)
        finally:
            server.terminate()
            server.wait()
    print(f"Models: {', '.join(Path(m).name for m in a.models)}; {a.max_tokens} tokens per request, "
          f"{a.rounds} requests per client; bound = streams × 4.2 TB/s ÷ weight bytes.\n")
    print("| model | weights (MB) | streams | aggregate tok/s | of bound | mean rows per GPU step "
          "| p50 request (ms) | p99 (ms) | statuses |")
    print("|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for name, wb, c, agg, frac, p50, p99, codes, single, mean_batch in rows:
        if name not in seen:
            seen.add(name)
            print(f"| {name} | {wb / 1e6:.1f} | 1 (streamed, 256 tokens) | {single:.0f} | "
                  f"{single / (PEAK / wb):.2%} | | | | |")
        st = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
        print(f"| {name} | {wb / 1e6:.1f} | {c} | {agg:.0f} | {frac:.2%} | {mean_batch:.1f} | {p50:.0f} "
              f"| {p99:.0f} | {st} |")
    if a.peer:
        out = subprocess.run([sys.executable, a.peer], capture_output=True, text=True, env=os.environ).stdout
        print("\nPeer (same run): " + "; ".join(
            f"B={j['batch']}: {j['tok_s_aggregate']:.0f} tok/s" for j in map(json.loads, out.splitlines())
            if j.get("batch") is not None))


if __name__ == "__main__":
    main()
