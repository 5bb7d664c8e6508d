#!/usr/bin/env python3
"""AtP vs AtP* against exact activation patching, per node type (issue 12 item 5).

Runs `phi3patch run --method all` (AtP, AtP*, exact patching of every node) on the embedded
model and on the random reference configs, collects results.json's `estimate_quality`
(Pearson and Spearman of |estimate| with |exact|, recall of the exact top-10 in the estimate's
top-20) and writes a Markdown table and a JSON file. The engine computes every number; this
script only runs it and formats.

    python3 tools/atp_quality_table.py [--cli build/phi3patch] [--out bench/results/atp-quality]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [
    ("tiny-temporal (embedded, trained)", "data/models/tiny-temporal-phi3"),
    ("rand-gqa-partial-longrope", "data/reference/rand-gqa-partial-longrope-sharded/model"),
    ("rand-tied-swa-bf16", "data/reference/rand-tied-swa-bf16/model"),
    ("rand-mqa-mixed-bf16", "data/reference/rand-mqa-mixed-bf16-sharded/model"),
]
HOOKS = "resid_pre,attn_out,mlp_out,z,q,k,v,pattern,mlp_post"


def fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "phi3patch"))
    ap.add_argument("--pairs", default=os.path.join(ROOT, "data", "temporal_scope_pairs.json"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hooks", default=HOOKS)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "atp-quality"),
                    help="writes OUT.md and OUT.json")
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel in MODELS:
            out = os.path.join(tmp, os.path.basename(rel.rstrip("/")) + "-" + str(len(rows)))
            cmd = [a.cli, "run", "--device", "cpu", "--model", os.path.join(ROOT, rel), "--pairs", a.pairs,
                   "--batch", str(a.batch), "--hooks", a.hooks, "--method", "all", "--out", out, "--force"]
            print("running", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            res = json.load(open(os.path.join(out, "results.json")))
            max_exact = {}
            for e in res["results"]:
                if e["method"] == "activation":
                    vals = [abs(x) for row in e["values"] for x in row if x is not None]
                    max_exact[e["hook"]] = max(vals) if vals else 0.0
            for q in res["estimate_quality"]:
                rows.append({"model": name, "prompts": len(res["prompts"]), "T": res["T"],
                             "clean_logit_diff": res["clean_logit_diff"],
                             "corrupted_logit_diff": res["corrupted_logit_diff"],
                             "max_abs_exact": max_exact[q["hook"]], **q})
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["hook"]), {})[r["method"]] = r
    lines = [
        f"AtP vs AtP* against exact activation patching (phi3patch {commit}, CPU, "
        f"{os.path.basename(a.pairs)}, batches of {a.batch} pairs; every pair both ways).",
        "r = Pearson of |estimate| with |exact effect|, rho = Spearman of the same, "
        "recall = share of the exact top-10 nodes in the estimate's top-20; max|exact| = the largest exact",
        "effect of the node type (normalized metric; below 1e-4 the effects are float noise and the row",
        "says nothing). Blank: undefined (an estimate that is 0 everywhere).",
        "",
        "| model | node type | nodes | max\\|exact\\| | r AtP | r AtP* | rho AtP | rho AtP* | recall AtP | recall AtP* |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, hook), m in by.items():
        at, st = m["attribution"], m["atp-star"]
        lines.append(f"| {model} | {hook} | {at['nodes']} | {at['max_abs_exact']:.2g} | {fmt(at['pearson_abs'])} | {fmt(st['pearson_abs'])} | "
                     f"{fmt(at['spearman_abs'])} | {fmt(st['spearman_abs'])} | "
                     f"{fmt(at['recall_exact_top10_in_top20'], 1)} | {fmt(st['recall_exact_top10_in_top20'], 1)} |")
    text = "\n".join(lines) + "\n"
    with open(a.out + ".md", "w") as f:
        f.write(text)
    with open(a.out + ".json", "w") as f:
        json.dump({"commit": commit, "date": datetime.date.today().isoformat(), "pairs": os.path.basename(a.pairs),
                   "batch_pairs": a.batch, "hooks": a.hooks, "rows": rows}, f, indent=1)
        f.write("\n")
    print(text)


if __name__ == "__main__":
    main()
