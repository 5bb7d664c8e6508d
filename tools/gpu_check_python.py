#!/usr/bin/env python3
"""The Python package on the GPU (scripts/gpu-check, step `python`): the embedded model loaded on
CUDA (fp32 and bf16) and on the CPU; Model.patch on both (largest difference per matrix),
run_with_cache on CUDA as torch tensors through DLPack (on the GPU, no copy, equal to the CPU's
numpy views), logit_diff, and the time of 20 patch calls. Writes one JSON on stdout.

    PYTHONPATH=build-gpu/python python3 tools/gpu_check_python.py [--device cuda]
"""
import argparse
import json
import sys
import time

import numpy as np

import phi3patch


def max_rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.nanmax(np.abs(a - b)) / max(1e-12, float(np.nanmax(np.abs(b)))))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    out = {"phi3patch_with_cuda": phi3patch._core.with_cuda()}
    cpu = phi3patch.load(device="cpu")
    ref = cpu.patch(methods="all", hooks=["resid_pre", "attn_out", "mlp_out", "z"], progress=False)
    names = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.2.attn.hook_pattern", "blocks.3.hook_mlp_out"]
    prompts = ["The goal is to make one cup of cappuccino.", "Water the plants"]
    cl, cc = cpu.run_with_cache(prompts, names)
    for dtype in ("fp32", "bf16"):
        m = phi3patch.load(device=a.device, dtype=dtype)
        r = m.patch(methods="all", hooks=["resid_pre", "attn_out", "mlp_out", "z"], progress=False)
        res = {"device": m.device, "matrices_max_rel_vs_cpu": {f"{h}/{me}": max_rel(r.matrix(h, me), ref.matrix(h, me))
                                                             for h, me in ref.keys()}}
        logits, cache = m.run_with_cache(prompts, names)
        kind = type(logits).__module__ + "." + type(logits).__name__
        res["cache_type"] = kind
        try:
            import torch  # type: ignore
            if isinstance(logits, torch.Tensor):
                res["cache_on"] = str(logits.device)
                host = {n: cache[n].cpu().numpy() for n in names}
                host["logits"] = logits.cpu().numpy()
            else:
                host = {n: np.asarray(cache[n]) for n in names}
                host["logits"] = np.asarray(logits)
        except ImportError:
            host = {n: np.asarray(cache[n]) for n in names}
            host["logits"] = np.asarray(logits)
        res["cache_max_rel_vs_cpu"] = {n: max_rel(host[n], cc[n]) for n in names}
        res["cache_max_rel_vs_cpu"]["logits"] = max_rel(host["logits"], cl)
        ld = m.logit_diff(prompts, ["short", "short"], ["long", "long"])
        res["logit_diff"] = ld.tolist()
        m.patch(progress=False)
        t0 = time.perf_counter()
        engine = 0.0
        for _ in range(a.calls):
            engine += m.patch(progress=False).engine_seconds
        wall = time.perf_counter() - t0
        res[f"patch_{a.calls}_calls_s"] = wall
        res["binding_overhead_fraction"] = (wall - engine) / wall
        out[dtype] = res
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
