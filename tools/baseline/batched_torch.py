#!/usr/bin/env python3
"""Baseline 2: the best plain PyTorch a careful user would write for exact activation patching.

    python3 tools/baseline/batched_torch.py --model DIR --pairs FILE --hooks resid_pre,attn_out,mlp_out \\
        --device cpu|cuda --dtype bf16|fp32 --json OUT.json [--max-rows 1024]

Many patched runs per forward: the (layer, position[, head]) patches of a hook are laid out as
groups of B rows (the corrupted batch repeated), n = max_rows // B patches per forward call; one
hook per layer writes the clean values into its groups' rows at their positions with a single
indexed copy. transformers' Phi3ForCausalLM with attn_implementation="sdpa", bf16 on the GPU (fp32 on
the CPU or with --fp32), torch.inference_mode, logits of the last position only
(logits_to_keep=1), full recompute (no prefix reuse, no skipping of no-op patches). Values as
tl_loop.py: normalized logit difference, denoising, [L][T] ([L][T][H] for z, [L][H] for z_all_pos).

Also timed: one forward of the corrupted batch (forward_ms, median of 10) and attribution patching
(attribution_ms: clean forward + corrupted forward with activation gradients + one backward,
autograd.grad to every requested hook's activations; median of 5); the attribution matrices are
written under "attribution" (DESIGN §5: sum over rows and d_model of (clean - corrupted) * dM/dact).
Each sweep is timed with torch.cuda.synchronize() around it after one warm-up forward at the
largest chunk size; the clean cache and the unpatched runs are outside the timing.
"""

import statistics
import sys

import torch

import common as C


def attribution(hp, b, hooks, LDc, LDx):
    """{hook: tensor in result layout} from 2 forwards + 1 backward."""
    names = sorted({"z" if h == "z_all_pos" else h for h in hooks})
    _, clean = hp.capture(b["clean"], names)
    with torch.enable_grad():
        logits, corr = hp.capture(b["corrupted"], names, grad=True)
        ld = C.logit_diff(logits, b["ans"], b["oth"]).mean()
        metric = (ld - LDx) / (LDc - LDx)
        flat = [corr[n][l] for n in names for l in range(hp.L)]
        grads = torch.autograd.grad(metric, flat)
    g = {n: grads[i * hp.L:(i + 1) * hp.L] for i, n in enumerate(names)}
    out = {}
    for h in hooks:
        n = "z" if h == "z_all_pos" else h
        per_layer = []
        for l in range(hp.L):
            prod = (clean[n][l].float() - corr[n][l].detach().float()) * g[n][l].float()  # [B, T, D]
            if n == "z":
                prod = prod.view(prod.shape[0], prod.shape[1], hp.H, hp.HD).sum(dim=(0, 3))  # [T, H]
                per_layer.append(prod.sum(0) if h == "z_all_pos" else prod)
            else:
                per_layer.append(prod.sum(dim=(0, 2)))  # [T]
        out[h] = torch.stack(per_layer)
    return out


def main():
    ap = C.base_args(__doc__)
    ap.add_argument("--max-rows", type=int, default=1024,
                    help="rows (patches x B) per forward call [1024]")
    args = C.finish_args(ap.parse_args())
    dev = args.device
    model = C.load_model(args.model, dev, args.dtype, "sdpa")
    hp = C.HookPoints(model)
    b = C.load_batches(args, model, dev)
    L, H, HD, T, B = hp.L, hp.H, hp.HD, b["T"], b["B"]
    nL = min(L, args.layers) if args.layers > 0 else L
    per_call = max(1, args.max_rows // B)
    corr = b["corrupted"]

    ld_clean, ld_corr = C.base_metrics(hp, b)
    LDc, LDx = float(ld_clean.mean()), float(ld_corr.mean())
    _, clean_cache = hp.capture(b["clean"], args.hooks)
    C.log(f"[batched_torch] {args.model} on {C.device_name(dev)} {args.dtype} sdpa: B={B} T={T} L={L}; "
          f"up to {per_call} patches ({per_call * B} rows) per forward; LD clean {LDc:.6f} corrupted {LDx:.6f}")

    def cells_of(hook):
        if hook == "z":
            return [(l, p, h) for l in range(nL) for p in range(T) for h in range(H)]
        if hook == "z_all_pos":
            return [(l, -1, h) for l in range(nL) for h in range(H)]
        return [(l, p, 0) for l in range(nL) for p in range(T)]

    def run_chunk(hook, cells):
        """One forward for len(cells) patches -> [len(cells)] normalized metrics."""
        n = len(cells)
        name = "z" if hook == "z_all_pos" else hook
        handles = []
        by_layer = {}
        for i, (l, p, h) in enumerate(cells):
            by_layer.setdefault(l, []).append((i, p, h))
        for l, lst in by_layer.items():
            g = torch.tensor([i for i, _, _ in lst], device=dev)  # [k] groups
            rows = (g[:, None] * B + torch.arange(B, device=dev)).reshape(-1)  # [k*B] rows of the chunk
            srows = rows % B  # the clean row each one copies from
            pos = torch.tensor([p for _, p, _ in lst], device=dev).repeat_interleave(B)
            heads = torch.tensor([h for _, _, h in lst], device=dev).repeat_interleave(B)
            src = clean_cache[name][l]

            def fn(t, rows=rows, srows=srows, pos=pos, heads=heads, src=src):
                if hook == "z":
                    t.view(t.shape[0], T, H, HD)[rows, pos, heads] = src.view(B, T, H, HD)[srows, pos, heads]
                elif hook == "z_all_pos":
                    t.view(t.shape[0], T, H, HD)[rows, :, heads] = src.view(B, T, H, HD)[srows, :, heads]
                else:
                    t[rows, pos] = src[srows, pos]
                return t
            handles.append(hp.add(name, l, fn))
        try:
            with torch.inference_mode():
                logits = hp.forward(corr, rows=n, logits_to_keep=1)
        finally:
            for hd in handles:
                hd.remove()
        ld = C.logit_diff(logits, b["ans"], b["oth"]).view(n, B).mean(1)
        return (ld - LDx) / (LDc - LDx)

    hooks_out = {}
    first = cells_of(args.hooks[0])
    run_chunk(args.hooks[0], first[:per_call])  # warm-up at the largest chunk
    for hook in args.hooks:
        cells = cells_of(hook)
        times = []
        for _ in range(max(1, args.repeat)):
            with C.Timer(dev) as tm:
                vals = torch.cat([run_chunk(hook, cells[i:i + per_call])
                                  for i in range(0, len(cells), per_call)]).cpu()
            times.append(tm.seconds)
        tm.seconds = min(times)
        calls = (len(cells) + per_call - 1) // per_call
        hooks_out[hook] = C.hook_result("batched_torch", hook, vals, L, T, H, nL, tm.seconds, calls,
                                        patches=len(cells))

    # one forward of the corrupted batch
    fw = []
    with torch.inference_mode():
        hp.forward(corr, logits_to_keep=1)
        for _ in range(10):
            with C.Timer(dev) as tm:
                hp.forward(corr, logits_to_keep=1)
            fw.append(tm.seconds)
    # attribution patching: 2 forwards + 1 backward
    attr = attribution(hp, b, args.hooks, LDc, LDx)  # warm-up (and the values)
    at = []
    for _ in range(5):
        with C.Timer(dev) as tm:
            attribution(hp, b, args.hooks, LDc, LDx)
        at.append(tm.seconds)
    forward_ms, attribution_ms = statistics.median(fw) * 1e3, statistics.median(at) * 1e3
    C.log(f"[batched_torch] forward {forward_ms:.3f} ms, attribution (2 fwd + 1 bwd, {len(args.hooks)} hooks) "
          f"{attribution_ms:.3f} ms")
    C.write_json(args.json, args, "batched_torch", model, b, ld_clean, ld_corr, hooks_out,
                 {"forward_ms": forward_ms, "attribution_ms": attribution_ms, "max_rows": per_call * B,
                  "attribution": {h: C.tolist(v) for h, v in attr.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
