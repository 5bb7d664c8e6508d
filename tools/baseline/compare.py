#!/usr/bin/env python3
"""Compare a baseline's patching matrices and timings with the engine's.

    python3 tools/baseline/compare.py OURS.json BASELINE.json [--tol 1e-4] [--attr-tol T]
                                      [--bench BENCH.json] [--json SUMMARY.json]

OURS.json: `phi3patch run` results.json (values + per-result "seconds"), or `phi3patch bench --json`
output ("sweeps": [{"hook", "fast_seconds", ...}], "forward_ms", "attribution_ms": timings only).
--bench adds a bench JSON's timings to a results.json. BASELINE.json: tl_loop.py / batched_torch.py
output. For every hook in both: max |difference| of the normalized activation-patching matrices
(cells the baseline did not sweep, null, are skipped) and, when the baseline has "attribution" and
ours has attribution results, of those too; then baseline seconds / our seconds (> 1: ours faster;
a baseline swept over --layers N < L is compared by its extrapolated_seconds). Exit status 1 when a
difference exceeds its tolerance, 2 when there was nothing to compare (or the shapes disagree).
"""

import argparse
import json
import math
import sys


def load_ours(path):
    """-> {"values": {hook: [[...]]}, "attr": {...}, "seconds": {hook: s}, "forward_ms", "attribution_ms",
    "device", "T", "LD": (clean, corrupted)}"""
    with open(path) as f:
        d = json.load(f)
    o = {"values": {}, "attr": {}, "seconds": {}, "forward_ms": d.get("forward_ms"),
         "attribution_ms": d.get("attribution_ms"), "device": d.get("device"), "T": d.get("T"), "rows": {}}
    if "clean_logit_diff" in d:
        o["LD"] = (d["clean_logit_diff"], d["corrupted_logit_diff"])
    for r in d.get("results", []):
        if r.get("method") == "activation":
            o["values"][r["hook"]] = r["values"]
            o["seconds"][r["hook"]] = r.get("seconds")
            o["rows"][r["hook"]] = r.get("rows")
        elif r.get("method") == "attribution":
            o["attr"][r["hook"]] = r["values"]
            o["rows"][r["hook"]] = r.get("rows")
    for s in d.get("sweeps", []):
        o["seconds"][s["hook"]] = s.get("fast_seconds")
    return o


def to_ours_layout(hook, v):
    """baseline layout -> ours: z [L][T][H] -> [L*H][T] (rows L0H0, L0H1, ...); others unchanged."""
    if hook != "z":
        return v
    L, T, H = len(v), len(v[0]), len(v[0][0])
    return [[v[l][p][h] for p in range(T)] for l in range(L) for h in range(H)]


def max_diff(a, b):
    """max |a - b| over cells where b (the baseline) is not null; None when shapes differ."""
    if len(a) != len(b):
        return None
    m, n = 0.0, 0
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return None
        for x, y in zip(ra, rb):
            if y is None or x is None:
                continue
            n += 1
            dd = abs(x - y)
            m = dd if (dd > m or math.isnan(dd)) else m
    return m, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("baseline")
    ap.add_argument("--tol", type=float, default=1e-4, help="activation patching tolerance [1e-4]")
    ap.add_argument("--attr-tol", type=float, default=None, help="attribution tolerance [--tol]")
    ap.add_argument("--bench", default=None, help="a `phi3patch bench --json` file for our timings")
    ap.add_argument("--json", default=None, help="also write the comparison as JSON")
    args = ap.parse_args()
    attr_tol = args.tol if args.attr_tol is None else args.attr_tol

    ours = load_ours(args.ours)
    if args.bench:
        bo = load_ours(args.bench)
        ours["seconds"].update({k: v for k, v in bo["seconds"].items() if v is not None})
        for k in ("forward_ms", "attribution_ms", "device"):
            ours[k] = bo[k] if bo[k] is not None else ours[k]
    with open(args.baseline) as f:
        base = json.load(f)
    name = base.get("baseline", "baseline")
    print(f"{name}: {base.get('device')} {base.get('dtype')}, T={base.get('T')} B={base.get('B')}; "
          f"ours: {ours.get('device')}")
    if ours.get("T") is not None and base.get("T") is not None and ours["T"] != base["T"]:
        print(f"T differs: ours {ours['T']}, baseline {base['T']}")
        return 2
    if "LD" in ours and "clean_logit_diff" in base:
        print(f"  logit diff clean: ours {ours['LD'][0]:.6f} baseline {base['clean_logit_diff']:.6f}; corrupted: "
              f"ours {ours['LD'][1]:.6f} baseline {base['corrupted_logit_diff']:.6f}")

    fail, compared, bad_shape = False, 0, False
    summary = {"baseline": name, "baseline_device": base.get("device"), "ours_device": ours.get("device"),
               "tol": args.tol, "attr_tol": attr_tol, "hooks": {}}
    for hook, h in base.get("hooks", {}).items():
        row = {}
        parts = []
        if hook in ours["values"]:
            r = max_diff(ours["values"][hook], to_ours_layout(hook, h["values"]))
            if r is None:
                parts.append("activation: SHAPE MISMATCH")
                bad_shape = True
            else:
                md, n = r
                ok = md <= args.tol
                fail |= not ok
                compared += 1
                row.update(activation_max_abs_diff=md, cells=n, activation_ok=ok)
                parts.append(f"activation max|diff| {md:.3e} over {n} cells {'ok' if ok else 'EXCEEDS ' + str(args.tol)}")
        if hook in ours["attr"] and base.get("attribution", {}).get(hook) is not None:
            r = max_diff(ours["attr"][hook], to_ours_layout(hook, base["attribution"][hook]))
            if r is None:
                parts.append("attribution: SHAPE MISMATCH")
                bad_shape = True
            else:
                md, n = r
                ok = md <= attr_tol
                fail |= not ok
                compared += 1
                row.update(attribution_max_abs_diff=md, attribution_ok=ok)
                parts.append(f"attribution max|diff| {md:.3e} {'ok' if ok else 'EXCEEDS ' + str(attr_tol)}")
        bs = h.get("extrapolated_seconds", h.get("seconds"))
        os_ = ours["seconds"].get(hook)
        if bs is not None and os_:
            row.update(baseline_seconds=bs, ours_seconds=os_, ratio=bs / os_)
            ex = " (extrapolated)" if h.get("layers_swept", base.get("L")) != base.get("L") else ""
            t = f"time {name} {bs:.4g} s{ex} / ours {os_:.4g} s = {bs / os_:.1f}x"
            if h.get("n_forward_calls") is not None:
                t += f" ({h['n_forward_calls']} forward calls)"
            parts.append(t)
        summary["hooks"][hook] = row
        print(f"  {hook:10s} " + "; ".join(parts))
    for k in ("forward_ms", "attribution_ms"):
        if base.get(k) and ours.get(k):
            summary[k] = {"baseline": base[k], "ours": ours[k], "ratio": base[k] / ours[k]}
            print(f"  {k}: {name} {base[k]:.4g} / ours {ours[k]:.4g} = {base[k] / ours[k]:.2f}x")
    if base.get("device") and ours.get("device") and \
            ("cpu" in base["device"].lower()) != ("cpu" in str(ours["device"]).lower()):
        print("  note: the two ran on different devices; the time ratios compare unlike machines")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    if bad_shape:
        return 2
    if fail:
        print("FAIL: a difference exceeds its tolerance")
        return 1
    if compared == 0 and any(ours["values"].values()):
        print("nothing compared: no hook in both files")
        return 2
    print("ok" if compared else "timings only (ours has no values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
