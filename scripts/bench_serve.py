#!/usr/bin/env python3
"""Serving benchmarks of `tinystate serve`, side by side in one run: cold-instance start-up, the
wasm guest's decode speed against the native engine (and llama.cpp) on the same model, and load
at several concurrency levels with `hey`.

usage: scripts/bench_serve.py [--model models/default-q8_0.gguf] [--runs 3] [--decode 256]
                              [--requests 200] [--concurrency 1,8,32] [--max-tokens 16]

1. Start-up: `--probes` sequential requests, each to a fresh instance (the server keeps none
   warm): the host's instantiation time (`x-tinystate-instantiate-us`) and the client's time to
   first byte, for `GET /health` and for a 1-token completion.
2. Decode: a streamed greedy completion of `--decode` tokens with `ignore_eos` (tokens/s between
   the first and the last token event) against the engine alone under `wasmtime run`
   (engine/examples/decode_speed.rs), `tinystate bench` (native, 1 thread) and
   llama.cpp (1 thread, when llama-cpp-python is installed) on the same GGUF, interleaved,
   `--runs` times each; medians.
3. Load: `hey` (Debian package) POSTs `--requests` completions of `--max-tokens` tokens at each
   concurrency level; requests/s over the whole run and p50/p99 of hey's per-request latencies.

Prints Markdown for BENCHMARKS.md. Needs a release build (done here) and `hey` on PATH.
"""
import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/tinystate"
PROMPT = "It is a truth universally acknowledged"

LLAMA_CPP_DECODE = r"""
import json, sys, time, llama_cpp
path, n = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(model_path=path, n_ctx=n + 64, n_threads=1, n_threads_batch=1, verbose=False)
V = llm.n_vocab()
tok = lambda i: 256 + (i * 7919) % (V - 300)
llm.reset()
t = time.perf_counter()
for i in range(n):
    llm.eval([tok(i + 17)])
print(json.dumps({"decode_tok_s": n / (time.perf_counter() - t)}))
"""


def start_server(args, binary=BIN):
    p = subprocess.Popen([str(binary), "serve", "--addr", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})
    line = p.stdout.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    if not m:
        p.kill()
        sys.exit(f"server did not start: {line!r}")
    return p, m.group(1), int(m.group(2))


def timed_request(host, port, method, path, body=None):
    """(status, instantiate µs from the host's header, seconds to the first body byte)."""
    c = http.client.HTTPConnection(host, port)
    t0 = time.perf_counter()
    c.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
    r = c.getresponse()
    r.read(1)
    ttfb = time.perf_counter() - t0
    r.read()
    c.close()
    return r.status, int(r.getheader("x-tinystate-instantiate-us", "0")), ttfb


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def startup(host, port, model, probes):
    rows = []
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0})
    for name, method, path, data in [("GET /health", "GET", "/health", None),
                                     ("1-token completion", "POST", "/v1/completions", body)]:
        inst, ttfb = [], []
        for _ in range(probes):
            status, us, t = timed_request(host, port, method, path, data)
            assert status == 200, status
            inst.append(us)
            ttfb.append(t * 1e3)
        rows.append((name, pct(inst, 0.5), pct(inst, 0.99), pct(ttfb, 0.5), pct(ttfb, 0.99)))
    return rows


def guest_decode(host, port, model, n):
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0,
                       "ignore_eos": True, "stream": True})
    c = http.client.HTTPConnection(host, port)
    c.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    times, buf = [], b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.removeprefix(b"data: ")
            if data != b"[DONE]" and json.loads(data)["choices"]:
                times.append(time.perf_counter())
    c.close()
    # Events carry text; a token that completes no character yet (rare) shares the next event,
    # so count tokens from the request, time from the first event to the last.
    return (n - 1) / (times[-1] - times[0])


def native_decode(model_path, n):
    out = subprocess.run([str(BIN), "bench", "--model", str(model_path), "--threads", "1", "--decode", str(n),
                          "--prefill", "0", "--reps", "1"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["decode_tok_s_median"]


def wasm_engine_decode(model_path, n):
    """The engine alone (engine/examples/decode_speed.rs) under the wasmtime CLI: no server, no
    guest, no epoch checks; separates the cost of wasm itself from the cost of serving."""
    wasm = ROOT / "target/wasm32-wasip2/release/examples/decode_speed.wasm"
    out = subprocess.run(["wasmtime", "run", "-W", "simd=y", "--dir", "/::/", str(wasm), str(Path(model_path).resolve()),
                          str(n)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["decode_tok_s"]


def llama_decode(model_path, n):
    try:
        out = subprocess.run([sys.executable, "-c", LLAMA_CPP_DECODE, str(model_path), str(n)], check=True,
                             capture_output=True, text=True)
    except subprocess.CalledProcessError:
        return None
    return json.loads(out.stdout)["decode_tok_s"]


def hey(host, port, model, requests, conc, max_tokens, hey_bin="hey"):
    """requests/s, p50 and p99 latency (ms) and status counts of `requests` completions at `conc`."""
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True})
    t0 = time.perf_counter()
    out = subprocess.run([hey_bin, "-n", str(requests), "-c", str(conc), "-t", "300", "-m", "POST", "-T", "application/json",
                          "-d", body, "-o", "csv", f"http://{host}:{port}/v1/completions"], check=True,
                         capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    # CSV: response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
    rows = [line.split(",") for line in out.splitlines()[1:] if line]
    lat = [float(r[0]) * 1e3 for r in rows]
    codes = {}
    for r in rows:
        codes[r[6]] = codes.get(r[6], 0) + 1
    sent = requests // conc * conc  # hey gives each client requests // conc of them
    if len(rows) < sent:  # hey leaves failed requests (e.g. a client timeout) out of the CSV
        codes["client error"] = sent - len(rows)
    return len(rows) / wall, pct(lat, 0.5), pct(lat, 0.99), codes


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models/default-q8_0.gguf"),
                   help="the GGUF the built-in guest embeds (for the native comparison)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--decode", type=int, default=256)
    p.add_argument("--probes", type=int, default=100)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=16)
    a = p.parse_args()

    print("building tinystate (release)", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "tinystate"], check=True, cwd=ROOT)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "tinystate-engine", "--example", "decode_speed",
                    "--target", "wasm32-wasip2"], check=True, cwd=ROOT)
    server, host, port = start_server(["--max-concurrency", "64"])
    try:
        c = http.client.HTTPConnection(host, port)
        c.request("GET", "/v1/models")
        model = json.loads(c.getresponse().read())["data"][0]["id"]
        c.close()

        start = startup(host, port, model, a.probes)
        dec = {"guest": [], "wasm engine": [], "native": [], "llama.cpp": []}
        for run in range(a.runs):
            dec["guest"].append(guest_decode(host, port, model, a.decode))
            dec["wasm engine"].append(wasm_engine_decode(a.model, a.decode))
            dec["native"].append(native_decode(a.model, a.decode))
            ll = llama_decode(a.model, a.decode)
            if ll is not None:
                dec["llama.cpp"].append(ll)
            print(f"decode run {run}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in dec.items() if v),
                  file=sys.stderr)
        load = [(conc, *hey(host, port, model, a.requests, conc, a.max_tokens))
                for conc in (int(x) for x in a.concurrency.split(","))]
    finally:
        server.terminate()
        server.wait()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}. "
          f"Model: {Path(a.model).name} (embedded in the guest).\n")
    print(f"Start-up, {a.probes} sequential requests, each on a fresh instance:\n")
    print("| request | instantiate p50 (µs) | p99 (µs) | time to first byte p50 (ms) | p99 (ms) |")
    print("|---|---|---|---|---|")
    for name, i50, i99, t50, t99 in start:
        print(f"| {name} | {i50} | {i99} | {t50:.2f} | {t99:.2f} |")
    m = statistics.median
    g, n = m(dec["guest"]), m(dec["native"])
    print(f"\nDecode, {a.decode} tokens, 1 thread, medians of {a.runs} runs:\n")
    print("| engine | decode tok/s | guest ÷ this |")
    print("|---|---|---|")
    print(f"| wasm guest in `tinystate serve` (simd128) | {g:.1f} | 1.00× |")
    we = m(dec["wasm engine"])
    print(f"| engine alone in `wasmtime run` (simd128, no server) | {we:.1f} | {g / we:.2f}× |")
    print(f"| native engine (`tinystate bench`, AVX-512 VNNI) | {n:.1f} | **{g / n:.2f}×** |")
    if dec["llama.cpp"]:
        ll = m(dec["llama.cpp"])
        print(f"| llama.cpp (llama-cpp-python) | {ll:.1f} | **{g / ll:.2f}×** |")
    print(f"\nLoad with `hey`, {a.requests} completions of {a.max_tokens} tokens (greedy, ignore_eos):\n")
    print("| concurrent clients | requests/s | tokens/s | p50 latency (ms) | p99 latency (ms) | statuses |")
    print("|---|---|---|---|---|---|")
    for conc, rps, p50, p99, codes in load:
        st = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
        print(f"| {conc} | {rps:.1f} | {rps * a.max_tokens:.0f} | {p50:.1f} | {p99:.1f} | {st} |")


if __name__ == "__main__":
    main()
