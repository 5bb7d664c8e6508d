#!/usr/bin/env python3
"""Baseline 1: the TransformerLens-style activation patching loop on transformers' Phi3ForCausalLM.

    python3 tools/baseline/tl_loop.py --model DIR --pairs FILE --hooks resid_pre,attn_out,mlp_out \\
        --device cpu|cuda --dtype bf16|fp32 --json OUT.json [--attn eager|sdpa]

What TransformerLens's `patching.get_act_patch_*` does: one cached clean run, then one full forward
of the corrupted batch per patch, with a forward hook that writes the clean value into
[all rows, layer, pos] (denoising) and is removed again (`run_with_hooks`); full logits; the
normalized logit difference of each run. Hooks resid_pre, resid_mid, resid_post, attn_out, mlp_out
give [L][T]; z (per head and position) [L][T][H]; z_all_pos (per head, every position) [L][H].
Prompts, padding and position ids as the engine (tools/baseline/common.py). The sweep of each hook
is timed with torch.cuda.synchronize() around it, after one warm-up patched forward; the clean
cache and the two unpatched runs are outside the timing.
"""

import statistics
import sys

import torch

import common as C


def main():
    ap = C.base_args(__doc__)
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                    help="transformers attn_implementation [eager]")
    args = C.finish_args(ap.parse_args())
    dev = args.device
    model = C.load_model(args.model, dev, args.dtype, args.attn)
    hp = C.HookPoints(model)
    b = C.load_batches(args, model, dev)
    L, H, HD, T, B = hp.L, hp.H, hp.HD, b["T"], b["B"]
    nL = min(L, args.layers) if args.layers > 0 else L
    corr = b["corrupted"]

    ld_clean, ld_corr = C.base_metrics(hp, b)
    LDc, LDx = float(ld_clean.mean()), float(ld_corr.mean())
    _, clean_cache = hp.capture(b["clean"], args.hooks)  # run_with_cache
    C.log(f"[tl_loop] {args.model} on {C.device_name(dev)} {args.dtype} attn={args.attn}: B={B} T={T} L={L}; "
          f"LD clean {LDc:.6f} corrupted {LDx:.6f}")

    def patched_metric(hook, l, p, h):
        """One forward of the corrupted batch with hook `hook` of layer l patched at position p
        (None: all) and head h (z only), like model.run_with_hooks(corrupted, fwd_hooks=[...])."""
        src = clean_cache["z" if hook == "z_all_pos" else hook][l]

        def hook_fn(t):
            if h is None:
                t[:, p] = src[:, p]
            else:
                tv, sv = t.view(B, T, H, HD), src.view(B, T, H, HD)
                ps = slice(None) if p is None else p
                tv[:, ps, h] = sv[:, ps, h]
            return t

        handle = hp.add("z" if hook == "z_all_pos" else hook, l, hook_fn)
        try:
            with torch.no_grad():
                logits = hp.forward(corr)
        finally:
            handle.remove()
        ld = C.logit_diff(logits, b["ans"], b["oth"]).mean()
        return (ld - LDx) / (LDc - LDx)  # a 0-d tensor: no host sync per patch

    patch_lists = {
        "z": lambda l: [(l, p, h) for p in range(T) for h in range(H)],
        "z_all_pos": lambda l: [(l, None, h) for h in range(H)],
    }
    hooks_out = {}
    patched_metric(args.hooks[0], 0, T - 1, 0 if args.hooks[0].startswith("z") else None)  # warm-up
    for hook in args.hooks:
        cells = [c for l in range(nL) for c in patch_lists.get(hook, lambda l: [(l, p, None) for p in range(T)])(l)]
        times = []
        for _ in range(max(1, args.repeat)):
            vals = []
            with C.Timer(dev) as tm:
                for (l, p, h) in cells:
                    vals.append(patched_metric(hook, l, p, h))
                vals = torch.stack(vals).cpu()
            times.append(tm.seconds)
        tm.seconds = min(times)
        hooks_out[hook] = C.hook_result("tl_loop", hook, vals, L, T, H, nL, tm.seconds, len(cells))

    # one unpatched forward (full logits, as in the loop), median of 10
    fw = []
    with torch.no_grad():
        hp.forward(corr)
        for _ in range(10):
            with C.Timer(dev) as tm:
                hp.forward(corr)
            fw.append(tm.seconds)
    C.write_json(args.json, args, "tl_loop", model, b, ld_clean, ld_corr, hooks_out,
                 {"forward_ms": statistics.median(fw) * 1e3, "attribution_ms": None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
