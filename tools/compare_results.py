#!/usr/bin/env python3
"""Compare two `phi3patch run` results.json files (e.g. one process against mpirun -np 2).

    python3 tools/compare_results.py A/results.json B/results.json [--tol 1e-6] [--json OUT]

For every (hook, method): the largest |difference| of the normalized matrices, and of the
per-prompt logit differences of activation patching; plus the two runs' rank counts and
wall times. Exit status 1 when a matrix differs by more than --tol (or the runs do not
match in hooks, shapes or tokens), else 0.
"""
import argparse
import json
import math
import os
import sys


def flat(v):
    out = []
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        else:
            out.append(float("nan") if x is None else float(x))
    return out


def max_abs(a, b):
    if len(a) != len(b):
        return None
    m = 0.0
    for x, y in zip(a, b):
        d = abs(x - y)
        if math.isnan(d) and not (math.isnan(x) and math.isnan(y)):
            return float("inf")
        if d > m:
            m = d
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--json", default=None)
    o = ap.parse_args()
    a, b = json.load(open(o.a)), json.load(open(o.b))
    rep = {"a": o.a, "b": o.b, "tol": o.tol, "tokens_equal": a.get("tokens") == b.get("tokens"),
           "world_size": [a.get("work", {}).get("world_size"), b.get("work", {}).get("world_size")],
           "wall_seconds": [a.get("work", {}).get("wall_seconds"), b.get("work", {}).get("wall_seconds")],
           "imbalance_token_layer_evals_b": b.get("work", {}).get("imbalance_token_layer_evals"),
           "results": []}
    ok = rep["tokens_equal"] and len(a["results"]) == len(b["results"])
    # --metric (results.json's "metric" object; older files: the logit difference)
    ma, mb = (d["metric"].get("name") if isinstance(d.get("metric"), dict) else "logit-diff" for d in (a, b))
    if ma != mb:
        print(f"different metrics: {ma} vs {mb}")
        ok = False
    raw_key = a["metric"].get("per_prompt_key") if isinstance(a.get("metric"), dict) else None
    for ra, rb in zip(a["results"], b["results"]):
        e = {"hook": ra["hook"], "method": ra["method"]}
        if (ra["hook"], ra["method"]) != (rb["hook"], rb["method"]):
            ok = False
            e["error"] = "different hooks/methods"
        else:
            e["max_abs_diff"] = max_abs(flat(ra["values"]), flat(rb["values"]))
            if "per_prompt_logit_diff" in ra:
                e["max_abs_diff_logit_diff"] = max_abs(flat(ra["per_prompt_logit_diff"]), flat(rb["per_prompt_logit_diff"]))
            elif raw_key and raw_key in ra and raw_key in rb:  # another metric's raw per-prompt values
                e["max_abs_diff_raw_metric"] = max_abs(flat(ra[raw_key]), flat(rb[raw_key]))
            if e["max_abs_diff"] is None or e["max_abs_diff"] > o.tol:
                ok = False
        rep["results"].append(e)
        print(f"{e['hook']:>10} {e['method']:<12} max |diff| {e.get('max_abs_diff')}"
              + (f", logit differences {e['max_abs_diff_logit_diff']:.3g}" if e.get("max_abs_diff_logit_diff") is not None else ""))
    rep["equal_within_tol"] = ok
    print(("equal" if ok else "NOT equal") + f" within {o.tol}")
    if o.json:
        with open(o.json + ".tmp", "w") as f:
            json.dump(rep, f, indent=1)
        os.replace(o.json + ".tmp", o.json)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
