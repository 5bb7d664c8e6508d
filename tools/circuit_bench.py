#!/usr/bin/env python3
"""Times `phi3patch circuit` against the PyTorch baseline (tools/baseline/circuit_torch.py) on the
same model, prompts, method and grid, in one job, and checks they agree.

    python3 tools/circuit_bench.py --model DIR [--pairs FILE] [--grid 10,100,1000] [--ig-steps 5]
                                   [--threads 2] [--json OUT.json] [--no-eval]

Measures: edge scoring (the clean and corrupted runs, the EAP-IG runs and the score reductions;
model loading excluded on both sides) and the exact circuit forwards of the grid (circuits per
second). Compares: every edge score (max |difference| relative to the largest |score|) and the
faithfulness of every grid circuit (each side chooses its own top-k and prunes it).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "baseline"))
import circuit_torch as ct  # noqa: E402
import make_reference as mr  # noqa: E402


def names(g):
    up = ["input"]
    for l in range(g.L):
        up += [f"a{l}.h{h}" for h in range(g.H)] + [f"m{l}"]
    down = []
    for l in range(g.L):
        down += [f"a{l}.h{h}<q>" for h in range(g.H)] + [f"a{l}.h{k}<k>" for k in range(g.KVH)]
        down += [f"a{l}.h{k}<v>" for k in range(g.KVH)] + [f"m{l}"]
    down.append("logits")
    return {n: i for i, n in enumerate(up)}, {n: i for i, n in enumerate(down)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "data/models/tiny-temporal-phi3"))
    ap.add_argument("--pairs", default=os.path.join(ROOT, "data/temporal_scope_for_attribution_patching.json"))
    ap.add_argument("--grid", default=None, help="k values (default: the engine's 1-2-5 grid)")
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cli", default=os.path.join(ROOT, "build/phi3patch"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-eval", action="store_true", help="scores only (no grid of exact circuits)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    out = tempfile.mkdtemp(prefix="circuit-bench-")
    cmd = [args.cli, "circuit", "--device", "cpu", "--model", args.model, "--pairs", args.pairs,
           "--ig-steps", str(args.ig_steps), "--out", out, "--force"]
    if args.grid:
        cmd += ["--edge-grid", args.grid]
    elif args.no_eval:
        cmd += ["--edge-grid", "0"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    print("engine:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    engine_wall = time.perf_counter() - t0
    with open(os.path.join(out, "circuit.json")) as f:
        E = json.load(f)

    tok = mr.Tok(args.model)
    # Pad with the config's pad_token_id, as the engine does (make-random's checkpoints say 32000,
    # the real Phi-3 id, while their small test tokenizer's <|endoftext|> is 1024).
    with open(os.path.join(args.model, "config.json")) as f:
        tok.pad_id = int(json.load(f).get("pad_token_id", tok.pad_id))
    with open(args.pairs) as f:
        batches = mr.build_batches(tok, json.load(f))
    model = mr.load_model(args.model)
    tc = ct.TorchCircuit(model)
    g = tc.g
    assert g.n_edges == E["graph"]["edges"], (g.n_edges, E["graph"]["edges"])
    print(f"torch: scoring {g.n_edges} edges ({args.ig_steps} IG steps)", flush=True)
    S, t_scores, (ld_clean, ld_corr), a_corr = ct.edge_scores(tc, batches, ig_steps=args.ig_steps, ig=True)

    up, down = names(g)
    ES = torch.zeros(g.U, g.Dn, dtype=torch.float64)
    with open(os.path.join(out, "edges.csv")) as f:
        next(f)
        for line in f:
            _, u, v, s, _ = line.rstrip("\n").split(",")
            ES[up[u], down[v]] = float(s)
    score_rel = float((ES - S.double()).abs().max() / S.abs().max())

    grid_rows = []
    t_eval, n_eval = 0.0, 0
    if not args.no_eval:
        # The same set the engine runs: empty, full and every grid circuit, each distinct one once.
        ks = [0, g.n_edges] + [p["k"] for p in E["faithfulness"]]
        t0 = time.perf_counter()
        distinct, lds, which = [], [], []
        for k in ks:
            mask = ct.top_k_pruned(g, S, k)
            for i, d in enumerate(distinct):
                if torch.equal(d, mask):
                    which.append(i)
                    break
            else:
                which.append(len(distinct))
                distinct.append(mask)
                lds.append(float(ct.circuit_logit_diff(tc, batches, mask, a_corr).mean()))
        t_eval = time.perf_counter() - t0
        n_eval = len(distinct)
        ld_empty, ld_full = lds[which[0]], lds[which[1]]
        for i, p in enumerate(E["faithfulness"]):
            f_t = (lds[which[2 + i]] - ld_empty) / (ld_full - ld_empty)
            grid_rows.append({"k": p["k"], "engine_edges": p["edges_after_pruning"],
                              "torch_edges": int(distinct[which[2 + i]].sum()),
                              "engine_faithfulness": p["faithfulness"], "torch_faithfulness": f_t})
            print(f"  k={p['k']}: faithfulness engine {p['faithfulness']:.6f} torch {f_t:.6f}", flush=True)

    tm = E["timing"]
    res = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.threads} threads each",
        "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "model": os.path.relpath(args.model, ROOT) if args.model.startswith(ROOT) else args.model,
        "graph": E["graph"], "prompts": E["prompts"], "T": E["T"], "method": "eap-ig", "ig_steps": args.ig_steps,
        "engine": {"score_seconds": tm["score_seconds"], "eval_seconds": tm["eval_seconds"],
                   "circuit_forwards": tm["circuit_forwards"], "wall_seconds_incl_load": engine_wall},
        "torch": {"version": torch.__version__, "score_seconds": t_scores, "eval_seconds": t_eval,
                  "circuit_forwards": n_eval},
        "score_max_rel_diff": score_rel,
        "faithfulness": grid_rows,
    }
    res["score_speedup"] = t_scores / tm["score_seconds"]
    if n_eval:
        e_rate = tm["circuit_forwards"] / tm["eval_seconds"]
        t_rate = n_eval / t_eval
        res["engine"]["circuit_forwards_per_second"] = e_rate
        res["torch"]["circuit_forwards_per_second"] = t_rate
        res["eval_speedup"] = e_rate / t_rate
        res["faithfulness_max_abs_diff"] = max(abs(r["engine_faithfulness"] - r["torch_faithfulness"])
                                               for r in grid_rows)
    print(json.dumps({k: v for k, v in res.items() if k != "faithfulness"}, indent=1))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    sys.exit(main())
