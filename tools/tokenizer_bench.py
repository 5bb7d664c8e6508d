#!/usr/bin/env python3
"""Tokenizer throughput: the engine (build/bench_tokenizer, C++) against Hugging Face
`tokenizers` (Rust, via Python) on the same texts, in one run, one thread each.

    python3 tools/tokenizer_bench.py [--out bench/results/tokenizer-<date>.json]

Texts: the 2,400-string BPE test corpus joined into one text (mixed scripts, numbers, white
space; 209 kB) and the temporal dataset's questions (English prose; 84 kB). Tokenizers: the
BPE test tokenizers in the Phi-4, Phi-4-mini and GPT-2 layouts (tests/data/bpe). Both sides
encode each text as one string without special tokens; "warm" = the engine's word cache
filled by an earlier pass (Hugging Face keeps its own cache across calls the same way, so
its timing is the best of several passes). Also checks that both give as many tokens (the
ids themselves are compared string by string in tests/cpu/test_bpe_tokenizer.cpp).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def texts():
    with open(os.path.join(ROOT, "tests/data/bpe/corpus.json"), encoding="utf-8") as f:
        corpus = "".join(t + "\n" for t in json.load(f)["texts"])
    with open(os.path.join(ROOT, "data/raw/temporal_scope_caa.json"), encoding="utf-8") as f:
        prose = "".join(item["question"] + "\n" for item in json.load(f))
    return {"corpus": corpus, "prose": prose}


def hf_time(tok, text, reps=20):
    best = float("inf")
    ids = None
    for _ in range(reps):
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        best = min(best, time.perf_counter() - t0)
    return best, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build/bench_tokenizer"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = subprocess.run([args.bench, "--benchmark_format=json", "--benchmark_filter=warm",
                          "--benchmark_repetitions=5", "--benchmark_report_aggregates_only=true"],
                         capture_output=True, text=True, check=True)
    engine = {}
    for b in json.loads(res.stdout)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        _, text, layout, _ = b["run_name"].split("/")
        engine[(layout, text)] = (b["real_time"] / 1e3, int(b["tokens"]))  # ms -> s
    rows = []
    tx = texts()
    for layout in ("phi-4", "phi-4-mini", "gpt2"):
        tok = Tokenizer.from_file(os.path.join(ROOT, "tests/data/bpe", layout, "tokenizer.json"))
        for name, text in tx.items():
            hf_s, ids = hf_time(tok, text)
            e_s, e_tokens = engine[(layout, name)]
            assert e_tokens == len(ids), f"{layout} {name}: engine {e_tokens} tokens, Hugging Face {len(ids)}"
            rows.append({"layout": layout, "text": name, "bytes": len(text.encode()), "tokens": len(ids),
                         "engine_s": e_s, "hf_tokenizers_s": hf_s, "speedup": hf_s / e_s})
            print(f"{layout:11s} {name:7s} {len(text.encode()) / 1e3:6.0f} kB {len(ids):6d} tokens   "
                  f"engine {e_s * 1e3:7.2f} ms ({len(text.encode()) / e_s / 1e6:5.1f} MB/s)   "
                  f"HF tokenizers {hf_s * 1e3:7.2f} ms   x{hf_s / e_s:.2f}")
    out = args.out or os.path.join(ROOT, "bench/results", f"tokenizer-{datetime.date.today()}.json")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    import tokenizers
    doc = {"what": "tokenizer throughput, one thread, median of 5 (engine) / best of 20 (HF)",
           "date": str(datetime.date.today()), "commit": commit, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "tokenizers_version": tokenizers.__version__, "rows": rows}
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(out + ".tmp", out)
    print(f"wrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
