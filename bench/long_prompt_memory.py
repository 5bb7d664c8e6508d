#!/usr/bin/env python3
"""Peak memory of attribution patching against the prompt length T, measured on the CPU.

Builds a random model of a few layers (`phi3patch make-random --like tiny`, full causal
attention, max_position_embeddings raised), prompts of about each requested T tokens (one
pair, run in both directions: B = 2), and runs `phi3patch run --method attribution` (or
--command: `circuit ...`, `run --method atp-star --verify-top K`, ...) under
/usr/bin/time for each binary given, recording the peak resident set size. With an older
binary beside the current one (e.g. built from the commit before the attention backward
recomputed its probabilities) the two columns show the quadratic and the linear growth.
Fits bytes = a + b T (+ c T^2) by least squares and writes JSON to --out.

  bench/long_prompt_memory.py --phi3patch build/phi3patch [--phi3patch OLD --label new,old] \
      --T 512,1024,2048,4096,8192 --out bench/results/cpu-long-prompt-memory-DATE.json
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

BASE = "The goal is to send a text message after breakfast. Is this a short-term or long-term goal? "


def make_model(exe, d):
    subprocess.run([exe, "make-random", "--out", d, "--like", "tiny", "--dtype", "f32", "--force"], check=True,
                   stdout=subprocess.DEVNULL)
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["max_position_embeddings"] = cfg["original_max_position_embeddings"] = 20000
    cfg["sliding_window"] = None  # full causal attention: the [T, T] case
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg


def pairs_file(d, repeats):
    q = BASE * repeats + "The answer is:"
    p = os.path.join(d, f"pairs-{repeats}.json")
    with open(p, "w") as f:
        json.dump([{"clean": {"question": q, "answer": "short"},
                    "corrupted": {"question": q.replace("send a text message", "found a charity", 1),
                                  "answer": "long"}}], f)
    return p


def run(exe, model, pairs, out, extra, command):
    cmd = ["/usr/bin/time", "-v", exe] + command.split() + ["--model", model, "--pairs", pairs, "--out", out,
                                                            "--force"] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, None, r.stderr.strip().splitlines()[-3:]
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    secs = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", r.stderr).group(1)
    parts = [float(x) for x in secs.split(":")]
    wall = sum(p * 60 ** (len(parts) - 1 - i) for i, p in enumerate(parts))
    name = "circuit.json" if command.startswith("circuit") else "results.json"
    with open(os.path.join(out, name)) as f:
        T = json.load(f)["T"]
    return T, (rss_kb * 1024, wall), None


def lstsq(xs, ys, degree):
    # normal equations for y = sum_k c_k x^k, k <= degree (small, exact enough in float64)
    n = degree + 1
    A = [[sum(x ** (i + j) for x in xs) for j in range(n)] for i in range(n)]
    b = [sum(y * x ** i for x, y in zip(xs, ys)) for i in range(n)]
    for i in range(n):  # Gauss-Jordan
        piv = A[i][i]
        for j in range(n):
            A[i][j] /= piv
        b[i] /= piv
        for k in range(n):
            if k != i:
                f = A[k][i]
                for j in range(n):
                    A[k][j] -= f * A[i][j]
                b[k] -= f * b[i]
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phi3patch", action="append", required=True, help="binary (repeat to compare)")
    ap.add_argument("--label", default="", help="comma-separated labels of the binaries")
    ap.add_argument("--run-args", action="append", default=None,
                    help="extra `run` arguments, one per --phi3patch (e.g. '--recompute on'; '' for none)")
    ap.add_argument("--T", default="512,1024,2048,4096,8192")
    ap.add_argument("--command", default="run --method attribution",
                    help="the phi3patch command measured (e.g. 'circuit --ig-steps 2', "
                         "'run --method atp-star --verify-top 10')")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-rss-gb", type=float, default=20.0, help="skip a binary's larger T once it passed this")
    a = ap.parse_args()
    labels = a.label.split(",") if a.label else [f"bin{i}" for i in range(len(a.phi3patch))]
    targets = [int(x) for x in a.T.split(",")]
    tmp = tempfile.mkdtemp(prefix="phi3-longT-")
    model = os.path.join(tmp, "model")
    cfg = make_model(a.phi3patch[0], model)
    res = {"what": f"peak RSS of `phi3patch {a.command}` (default hooks; one pair in both directions: B = 2) "
                   "against T, random tiny model with full causal attention",
           "command": a.command,
           "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "model": {k: cfg[k] for k in ("hidden_size", "num_attention_heads",
                                                                   "num_key_value_heads", "num_hidden_layers",
                                                                   "intermediate_size", "vocab_size")},
           "binaries": {}}
    extras = [x.split() for x in a.run_args] if a.run_args else [[] for _ in a.phi3patch]
    if len(extras) != len(a.phi3patch):
        sys.exit("--run-args: give one per --phi3patch")
    for exe, label, extra in zip(a.phi3patch, labels, extras):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        rows = []
        for t in targets:
            reps = max(1, round((t - 5) / 23.2))
            T, meas, err = run(exe, model, pairs_file(tmp, reps), os.path.join(tmp, f"out-{label}-{t}"), extra,
                               a.command)
            if err:
                rows.append({"target_T": t, "error": err})
                print(f"{label} T~{t}: failed: {err}", file=sys.stderr)
                break
            rows.append({"T": T, "peak_rss_bytes": meas[0], "wall_s": round(meas[1], 2)})
            print(f"{label} T={T}: peak RSS {meas[0] / 2**20:.1f} MiB, {meas[1]:.1f} s", file=sys.stderr)
            if meas[0] > a.max_rss_gb * 2**30:
                break
        ok = [r for r in rows if "T" in r]
        fit = {}
        if len(ok) >= 3:
            xs, ys = [r["T"] for r in ok], [r["peak_rss_bytes"] for r in ok]
            c1 = lstsq(xs, ys, 1)
            c2 = lstsq(xs, ys, 2)
            fit = {"linear_bytes_per_token": c1[1], "linear_intercept_bytes": c1[0],
                   "quadratic_bytes_per_token2": c2[2], "quadratic_bytes_per_token": c2[1]}
        res["binaries"][label] = {"path": exe, "run_args": extra, "repo_commit": commit, "runs": rows, "fit": fit}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(res, f, indent=2)
    os.replace(a.out + ".tmp", a.out)
    for label, b in res["binaries"].items():
        f = b["fit"]
        if f:
            print(f"{label}: {f['linear_bytes_per_token'] / 1024:.1f} KiB/token (linear fit), "
                  f"{f['quadratic_bytes_per_token2']:.1f} B/token^2 (quadratic term)")


if __name__ == "__main__":
    main()
