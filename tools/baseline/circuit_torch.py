#!/usr/bin/env python3
"""EAP / EAP-IG edge scores and exact circuit evaluation in plain PyTorch: the baseline that
`phi3patch circuit` is timed against (tools/circuit_bench.py runs both in one job).

What a careful PyTorch user would write, in the way the EAP-IG authors' library does it (read
for the conventions, not copied): a forward in which every downstream node of a layer gets its
own copy of the residual stream as one batched tensor ([B, T, H, D] for the query heads, [B, T,
KVH, D] for keys and values), per-head projections as one einsum, the upstream outputs as a
[B, T, U, D] tensor, the gradients at the downstream inputs from autograd, and each layer's scores
as one einsum of the two. The exact circuit forward gives each downstream node
resid - sum over edges outside the circuit of (a_u(current) - a_u(corrupted)), again one einsum
per layer. fp32, `torch.inference_mode` where no gradient is needed.
"""

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import circuit_reference  # noqa: E402
import families  # noqa: E402
from circuit_reference import NodeModel  # noqa: E402  (the model's shape and RMSNorm)


class Graph(circuit_reference.Graph):
    """The reference's graph (index order of patching/circuit_graph.h) with the edge matrix
    built by slices instead of per-cell calls."""

    def __init__(self, L, H, KVH):
        super().__init__(L, H, KVH)
        self.n_edges = int(self.valid().sum())

    def valid(self):
        L, H, per = self.L, self.H, self.per
        m = torch.zeros(self.U, self.Dn, dtype=torch.bool)
        m[0, :] = True
        m[:, -1] = True
        for lu in range(L):
            heads = slice(1 + lu * (H + 1), 1 + lu * (H + 1) + H)
            mlp = 1 + lu * (H + 1) + H
            m[heads, lu * per + per - 1] = True  # heads -> their layer's MLP
            m[heads, (lu + 1) * per:L * per] = True
            m[mlp, (lu + 1) * per:L * per] = True
        return m

    def up_limit(self, l):  # upstream nodes written before layer l's attention reads
        return 1 + l * (self.H + 1)


class TorchCircuit(NodeModel):
    def __init__(self, model):
        super().__init__(model)  # shape, window, eps, norm(); its per-node run() is not used here
        self.g = Graph(self.L, self.H, self.KVH)
        self.W = []
        for layer in model.model.layers:
            at = layer.self_attn
            Wqkv, bqkv = families.qkv_weight_bias(layer)  # q|k|v rows, any family's layout
            H, KVH, HD = self.H, self.KVH, self.HD
            self.W.append({
                "q": Wqkv[:H * HD].view(H, HD, self.D),
                "k": Wqkv[H * HD:(H + KVH) * HD].view(KVH, HD, self.D),
                "v": Wqkv[(H + KVH) * HD:].view(KVH, HD, self.D),
                "o": at.o_proj.weight.view(self.D, H, HD).permute(1, 2, 0),  # [H, HD, D]
                "o_bias": at.o_proj.bias,
                "b": None if bqkv is None else {"q": bqkv[:H * HD].view(H, 1, HD),
                                                "k": bqkv[H * HD:(H + KVH) * HD].view(KVH, 1, HD),
                                                "v": bqkv[(H + KVH) * HD:].view(KVH, 1, HD)},
            })

    def run(self, batch, emb=None, leaves=False, circuit=None):
        """Returns (logits at the last position [B, V], upstream outputs [B, T, U, D], leaves).
        leaves: every downstream input gets a zero leaf requiring grad (their .grad = g_v).
        circuit: (mask [U, Dn] bool, a_corr [B, T, U, D]) -> the exact circuit forward."""
        mdl = self.model.model
        L, H, KVH, HD, D, g = self.L, self.H, self.KVH, self.HD, self.D, self.g
        tokens, pos, mask = batch["tokens"], batch["pos"], batch["mask"].bool()
        B, T = tokens.shape
        x = mdl.embed_tokens(tokens) if emb is None else emb
        cos, sin = mdl.rotary_emb(x, pos)
        t = torch.arange(T)
        causal = (t[None, :, None] >= t[None, None, :]) & mask[:, None, :]
        ups = [x]
        lv = {}
        resid = x
        grp = H // KVH
        if circuit is not None:
            cmask, a_corr = circuit
            off = (~cmask) & g.valid()  # edges carrying the corrupted value

        def inputs(v0, n, Ul, resid):
            """[B, T, n, D] inputs of downstream nodes v0 .. v0+n-1."""
            xin = resid.unsqueeze(2).expand(B, T, n, D)
            if circuit is not None:
                diff = torch.stack(ups[:Ul], 2) - a_corr[:, :, :Ul]
                xin = xin - torch.einsum("uv,btud->btvd", off[:Ul, v0:v0 + n].to(diff.dtype), diff)
            if leaves:
                z = torch.zeros(B, T, n, D, requires_grad=True)
                lv[v0] = z
                xin = xin + z
            return xin

        for l, layer in enumerate(mdl.layers):
            vis = causal
            if self.windows[l]:  # this layer's sliding window
                vis = vis & (t[None, :, None] - t[None, None, :] < self.windows[l])
            W = self.W[l]
            w1 = layer.input_layernorm.weight
            per = g.per
            xin = self.norm(inputs(l * per, H + 2 * KVH, g.up_limit(l), resid), w1, self.eps)
            q = torch.einsum("bthd,hed->bhte", xin[:, :, :H], W["q"])
            k = torch.einsum("bthd,hed->bhte", xin[:, :, H:H + KVH], W["k"])
            v = torch.einsum("bthd,hed->bhte", xin[:, :, H + KVH:], W["v"])
            if W["b"] is not None:  # [heads, 1, HD] biases broadcast over [B, heads, T, HD]
                q, k, v = q + W["b"]["q"], k + W["b"]["k"], v + W["b"]["v"]
            q, k = families.qk_norm(layer, q, k)  # Qwen3: per head, before rotary
            q, k = self.rotary(q, k, cos, sin)
            k = k.repeat_interleave(grp, 1)
            v = v.repeat_interleave(grp, 1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
            p = torch.softmax(s.masked_fill(~vis[:, None], float("-inf")), -1).nan_to_num(0.0)
            z = p @ v  # [B, H, T, HD]
            heads = torch.einsum("bhte,hed->bthd", z, W["o"])  # [B, T, H, D]
            ups.extend(heads.unbind(2))
            resid = resid + heads.sum(2)
            if W["o_bias"] is not None:  # not a node: the same in every run
                resid = resid + W["o_bias"]
            xm = self.norm(inputs(l * per + per - 1, 1, g.up_limit(l) + H, resid)[:, :, 0],
                           layer.post_attention_layernorm.weight, self.eps)
            gate, up = families.gate_up(layer, xm)
            mo = layer.mlp.down_proj(torch.nn.functional.silu(gate) * up)
            ups.append(mo)
            resid = resid + mo
        xf = self.norm(inputs(g.Dn - 1, 1, g.U, resid)[:, :, 0], mdl.norm.weight, self.eps)
        logits = self.model.lm_head(xf[:, -1])
        return logits, torch.stack(ups, 2), lv


def logit_diff(last_logits, ans, oth):
    b = torch.arange(last_logits.shape[0])
    return last_logits[b, ans] - last_logits[b, oth]


def edge_scores(tc, batches, ig_steps=5, ig=True, noising=False):
    """Dense [U, Dn] scores (the engine's layout) and the seconds they took."""
    g = tc.g
    ans = torch.tensor(batches["answer_ids"])
    oth = torch.tensor(batches["other_ids"])
    t0 = time.perf_counter()
    with torch.inference_mode():
        lc, a_clean, _ = tc.run(batches["clean"])
        lk, a_corr, _ = tc.run(batches["corrupted"])
    ld_clean = float(logit_diff(lc, ans, oth).mean())
    ld_corr = float(logit_diff(lk, ans, oth).mean())
    scale = 1.0 / (ld_clean - ld_corr)
    diff = (a_corr - a_clean) if noising else (a_clean - a_corr)
    x_clean, x_corr = a_clean[:, :, 0], a_corr[:, :, 0]
    runs = []
    if not ig:
        runs.append((batches["clean"] if noising else batches["corrupted"], None))
    else:
        for k in range(ig_steps):
            runs.append((batches["corrupted"], x_corr + (k / ig_steps) * (x_clean - x_corr)))
    S = torch.zeros(g.U, g.Dn)
    for batch, emb in runs:
        logits, _, lv = tc.run(batch, emb=emb, leaves=True)
        m = (logit_diff(logits, ans, oth).mean() - ld_corr) * scale
        m.backward()
        with torch.no_grad():
            for l in range(g.L):
                v0 = l * g.per
                S[:g.up_limit(l), v0:v0 + g.per - 1] += torch.einsum(
                    "btud,btvd->uv", diff[:, :, :g.up_limit(l)], lv[v0].grad)
                S[:g.up_limit(l) + g.H, v0 + g.per - 1] += torch.einsum(
                    "btud,btd->u", diff[:, :, :g.up_limit(l) + g.H], lv[v0 + g.per - 1].grad[:, :, 0])
            S[:, g.Dn - 1] += torch.einsum("btud,btd->u", diff, lv[g.Dn - 1].grad[:, :, 0])
    S /= len(runs)
    S[~g.valid()] = 0
    return S, time.perf_counter() - t0, (ld_clean, ld_corr), a_corr


def circuit_logit_diff(tc, batches, mask, a_corr):
    ans = torch.tensor(batches["answer_ids"])
    oth = torch.tensor(batches["other_ids"])
    with torch.inference_mode():
        logits, _, _ = tc.run(batches["clean"], circuit=(mask, a_corr))
    return logit_diff(logits, ans, oth)


def top_k_pruned(g, scores, k):
    """Top k valid edges by |score| (ties in index order), pruned as the engine prunes."""
    valid = g.valid()
    flat = scores.abs().masked_fill(~valid, -1).flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    m = torch.zeros(g.U * g.Dn, dtype=torch.bool)
    m[order[:k]] = True
    return prune(g, m.view(g.U, g.Dn))


def prune(g, mask):
    """The reference's pruning (Graph.prune) with whole rows of the mask per step."""
    grp = g.H // g.KVH
    reach = torch.zeros(g.U, dtype=torch.bool)
    reach[0] = True  # the input
    for l in range(g.L):
        fed = mask[reach].any(0)
        for h in range(g.H):
            reach[g.head(l, h)] = bool(fed[g.q(l, h)] or fed[g.k(l, h // grp)] or fed[g.v(l, h // grp)])
        fed = mask[reach].any(0)
        reach[g.mlp_out(l)] = bool(fed[g.mlp_in(l)])
    live = torch.zeros(g.Dn, dtype=torch.bool)
    live[g.logits()] = True
    up_live = torch.zeros(g.U, dtype=torch.bool)
    for l in reversed(range(g.L)):
        up_live[g.mlp_out(l)] = bool((mask[g.mlp_out(l)] & live).any())
        live[g.mlp_in(l)] = up_live[g.mlp_out(l)]
        for h in range(g.H):
            up_live[g.head(l, h)] = bool((mask[g.head(l, h)] & live).any())
            live[g.q(l, h)] = up_live[g.head(l, h)]
        for kv in range(g.KVH):
            live[g.k(l, kv)] = live[g.v(l, kv)] = bool(up_live[g.head(l, kv * grp):g.head(l, (kv + 1) * grp)].any())
    return mask & reach[:, None] & live[None, :]
