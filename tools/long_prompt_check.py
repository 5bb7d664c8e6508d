#!/usr/bin/env python3
"""The long-prompt step of scripts/gpu-check: AtP on one pair of T tokens, the plan and the
roofline against the run.

  long_prompt_check.py pair --T 8192 --vocab 32064 --out long_pair.json
      one pre-tokenized pair of T tokens with BOS (random ids, fixed seed; the last token
      differs), answers 3 and 4 positions into the vocabulary's ordinary range
  long_prompt_check.py compare --predicted pred.json --results results.json --out long.json
      the roofline's forward + attribution time and the plan's peak (bench --predict --json)
      against the run's measured seconds and device-memory high-water mark (results.json
      "work" and "memory"); ratios measured / predicted
"""
import argparse
import json
import os
import random
import sys


def write_pair(T, vocab, out):
    rng = random.Random(8192)
    lo, hi = min(100, vocab // 4), vocab - 1
    ids = [rng.randrange(lo, hi) for _ in range(T - 1)]  # BOS makes T
    other = list(ids)
    other[-1] = lo + (ids[-1] - lo + 1) % (hi - lo)
    pair = [{"clean": {"ids": ids, "answer_id": lo + 3}, "corrupted": {"ids": other, "answer_id": lo + 4}}]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pair, f)
    os.replace(tmp, out)


def phase(pred, name):
    for p in pred.get("phases", []):
        if p.get("phase") == name:
            return p
    return {}


def compare(pred_path, results_path, out):
    pred = json.load(open(pred_path))
    res = json.load(open(results_path))
    fwd, atp = phase(pred, "forward"), phase(pred, "attribution")
    rank = (res.get("work", {}).get("ranks") or [{}])[0]
    mem = res.get("memory", {})
    r = {
        "model": res.get("model"), "T": res.get("T"), "device": res.get("device"),
        "predicted_device": pred.get("device"),
        "predicted_seconds": (fwd.get("predicted_ms", 0) + atp.get("predicted_ms", 0)) / 1e3 if fwd and atp else None,
        "predicted_attribution_checkpointed": pred.get("attribution_checkpointed"),
        "predicted_peak_bytes": atp.get("peak_bytes"),
        "measured_seconds": rank.get("seconds"),
        "measured_forward_seconds": rank.get("forward_seconds"),
        "planned_peak_bytes": mem.get("planned_peak_bytes"),
        "measured_peak_bytes": mem.get("measured_peak_bytes"),
        "memory": mem,
        "note": "forward + attribution of one pair (B = 2 sequences); predicted = bench --predict's roofline "
                "(forward + attribution phases) and allocation walk; measured = the run on this device",
    }
    if r["predicted_seconds"] and r["measured_seconds"]:
        r["time_measured_over_predicted"] = r["measured_seconds"] / r["predicted_seconds"]
    if r["planned_peak_bytes"] and r["measured_peak_bytes"]:
        r["peak_measured_over_planned"] = r["measured_peak_bytes"] / r["planned_peak_bytes"]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(r, f, indent=1)
    os.replace(tmp, out)
    print(json.dumps({k: v for k, v in r.items() if k != "memory"}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pair")
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--predicted", required=True)
    c.add_argument("--results", required=True)
    c.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "pair":
        if a.T < 2 or a.vocab < 16:
            sys.exit("long_prompt_check: --T must be >= 2 and --vocab >= 16")
        write_pair(a.T, a.vocab, a.out)
    else:
        compare(a.predicted, a.results, a.out)


if __name__ == "__main__":
    main()
