#!/usr/bin/env python3
"""End-to-end: N calls of Model.patch on a model loaded once against N runs of the command line
(`phi3patch run`, which loads the model each time), in one run, and the binding's overhead: a
call's Python-side time against the engine's own time for it (run_experiment in C++).

    PYTHONPATH=build/python build/pyenv/bin/python bench/python_vs_cli.py [--model DIR] [--n 20] [--json FILE]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import phi3patch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--cli", default=os.path.join(os.path.dirname(__file__), "..", "build", "phi3patch"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", default="both", help="as phi3patch run --method [both]")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    model_dir = a.model or phi3patch.embedded_model_dir()

    t0 = time.perf_counter()
    m = phi3patch.load(model_dir, device=a.device)
    load_s = time.perf_counter() - t0
    m.patch(methods=a.method, progress=False)  # warm-up
    calls, overhead = [], []
    t0 = time.perf_counter()
    for _ in range(a.n):
        t = time.perf_counter()
        r = m.patch(methods=a.method, progress=False)
        dt = time.perf_counter() - t
        calls.append(dt)
        overhead.append(dt - r.engine_seconds)
    py_total = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([a.cli, "run", "--model", model_dir, "--device", a.device, "--out", tmp, "--force",
                        "--method", a.method], check=True, capture_output=True)  # warm-up (page cache)
        t0 = time.perf_counter()
        for _ in range(a.n):
            subprocess.run([a.cli, "run", "--model", model_dir, "--device", a.device, "--out", tmp, "--force",
                            "--method", a.method], check=True, capture_output=True)
        cli_total = time.perf_counter() - t0

    res = {
        "what": f"{a.n} Model.patch calls (model loaded once) vs {a.n} `phi3patch run` (each loads the model and "
                "writes its files), default experiment (seed pairs, resid_pre/attn_out/mlp_out, attribution + activation)",
        "model": model_dir, "device": m.device, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "load_seconds": load_s,
        "python_calls_total_s": py_total, "cli_runs_total_s": cli_total, "speedup": cli_total / py_total,
        "per_call_median_s": statistics.median(calls),
        "binding_overhead_median_s": statistics.median(overhead),
        "binding_overhead_fraction_median": statistics.median(o / c for o, c in zip(overhead, calls)),
    }
    print(f"{a.n} Model.patch calls: {py_total:.3f} s ({res['per_call_median_s'] * 1e3:.1f} ms median per call)")
    print(f"{a.n} phi3patch run:     {cli_total:.3f} s  -> {res['speedup']:.1f}x")
    print(f"binding overhead per call: {res['binding_overhead_median_s'] * 1e3:.3f} ms median, "
          f"{100 * res['binding_overhead_fraction_median']:.2f}% of the call")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
