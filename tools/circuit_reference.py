#!/usr/bin/env python3
"""PyTorch reference for circuit discovery (issue 13): EAP and EAP-IG edge scores and the exact
metric of given circuits, for every config under data/reference/.

    python3 tools/circuit_reference.py     # writes data/reference/<name>/circuit.json

The graph is the engine's (patching/circuit_graph.h): upstream nodes input, a<l>.h<h> (head h's
slice of o_proj's input times its o_proj columns), m<l>; downstream nodes a<l>.h<h><q> (per query
head), a<l>.h<g><k> and <v> (per KV head), m<l> (the MLP's input), logits; dense
[upstream, downstream] index order as there.

Everything here is its own code on top of the `transformers` weights: a Phi-3 forward written
per node, in which every downstream node reads the residual stream through a function of its
own (head h's q path normalises its own copy of the stream and multiplies by head h's rows of
qkv_proj, ...). Its plain run is checked against the `transformers` model's logits first.

  * EAP (denoise): score(u -> v) = sum over rows and positions of (a_u(clean) - a_u(corrupted)) .
    d m / d (input of v) on the corrupted run; m = the normalized logit difference (mean over rows,
    (LD - LD_corr) / (LD_clean - LD_corr)). Noise: the gradient on the clean run, the difference
    corrupted - clean.
  * EAP-IG (Hanna et al. 2024, the authors' convention): the gradients averaged over the runs on
    input embeddings x_corr + (k / steps) (x_clean - x_corr), k = 0 .. steps - 1.
  * The exact circuit metric: a forward on the clean input in which every downstream node v reads
    resid(current) - sum over u -> v not in the circuit of (a_u(current) - a_u(corrupted)): every edge
    outside the circuit carries the corrupted value of its upstream node. (The engine assembles the
    same inputs the other way round, from the corrupted stream plus the circuit's differences.)

Circuits written for the engine to evaluate: the full graph, the empty one, the full graph less
one edge (three of them: the largest |EAP-IG| edges), and top-k by |EAP-IG| (denoise) pruned to
the part connected from the input to the logits, for a few k.
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import families  # noqa: E402
import make_reference as mr  # noqa: E402  (Tok, build_batches, load_model, logit_diff)

ROOT = mr.ROOT
IG_STEPS = 5


class Graph:
    def __init__(self, L, H, KVH):
        self.L, self.H, self.KVH = L, H, KVH
        self.per = H + 2 * KVH + 1
        self.U = 1 + L * (H + 1)
        self.Dn = L * self.per + 1

    def head(self, l, h):
        return 1 + l * (self.H + 1) + h

    def mlp_out(self, l):
        return 1 + l * (self.H + 1) + self.H

    def q(self, l, h):
        return l * self.per + h

    def k(self, l, g):
        return l * self.per + self.H + g

    def v(self, l, g):
        return l * self.per + self.H + self.KVH + g

    def mlp_in(self, l):
        return l * self.per + self.H + 2 * self.KVH

    def logits(self):
        return self.L * self.per

    def up_layer(self, u):
        return -1 if u == 0 else (u - 1) // (self.H + 1)

    def up_is_head(self, u):
        return u > 0 and (u - 1) % (self.H + 1) < self.H

    def down_layer(self, v):
        return self.L if v == self.logits() else v // self.per

    def has_edge(self, u, v):
        if u == 0 or v == self.logits():
            return True
        lu, lv = self.up_layer(u), self.down_layer(v)
        if v == self.mlp_in(lv):
            return lu <= lv if self.up_is_head(u) else lu < lv
        return lu < lv

    def valid(self):
        m = torch.zeros(self.U, self.Dn, dtype=torch.bool)
        for u in range(self.U):
            for v in range(self.Dn):
                m[u, v] = self.has_edge(u, v)
        return m

    def prune(self, mask):
        """Edges whose upstream node has no path from the input, or whose downstream node's
        component has no path to the logits, removed (written independently of the engine's)."""
        L, H, KVH, grp = self.L, self.H, self.KVH, self.H // self.KVH
        reach = [False] * self.U
        reach[0] = True

        def fed(v):
            return any(reach[u] and mask[u, v] for u in range(self.U))

        for l in range(L):
            for h in range(H):
                reach[self.head(l, h)] = fed(self.q(l, h)) or fed(self.k(l, h // grp)) or fed(self.v(l, h // grp))
            reach[self.mlp_out(l)] = fed(self.mlp_in(l))
        live = [False] * self.Dn  # downstream node whose component reaches the logits
        live[self.logits()] = True
        up_live = [False] * self.U

        def feeds(u):
            return any(live[v] and mask[u, v] for v in range(self.Dn))

        for l in reversed(range(L)):
            up_live[self.mlp_out(l)] = feeds(self.mlp_out(l))
            live[self.mlp_in(l)] = up_live[self.mlp_out(l)]
            for h in range(H):
                up_live[self.head(l, h)] = feeds(self.head(l, h))
                live[self.q(l, h)] = up_live[self.head(l, h)]
            for g in range(KVH):
                any_h = any(up_live[self.head(l, h)] for h in range(g * grp, (g + 1) * grp))
                live[self.k(l, g)] = live[self.v(l, g)] = any_h
        out = mask.clone()
        for u in range(self.U):
            for v in range(self.Dn):
                if out[u, v] and (not reach[u] or not live[v]):
                    out[u, v] = False
        return out


class NodeModel:
    """A decoder forward (any family of families.py) written per graph node over the weights of
    a `transformers` model."""

    def __init__(self, model):
        self.model = model
        c = model.config
        self.L, self.H, self.KVH = c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
        self.D = c.hidden_size
        self.HD = getattr(c, "head_dim", None) or self.D // self.H
        self.windows = [families.layer_window(model, l) for l in range(self.L)]
        self.learned_pos = families.learned_positions(model)  # GPT-2: LayerNorm, no rotary, GELU MLP
        self.rotary = None if self.learned_pos else families.modeling(families.family_of(model)).apply_rotary_pos_emb
        self.eps = None if self.learned_pos else c.rms_norm_eps
        self.g = Graph(self.L, self.H, self.KVH)

    @staticmethod
    def norm(x, w, eps):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def run(self, batch, read, emb=None, record=None):
        """read(v, resid) -> the input of downstream node v; record(u, a_u) sees every upstream
        output. emb: input embeddings [B,T,D] (default: the tokens' embeddings)."""
        mdl = self.model.model
        L, H, KVH, HD, D = self.L, self.H, self.KVH, self.HD, self.D
        tokens, pos, mask = batch["tokens"], batch["pos"], batch["mask"].bool()
        B, T = tokens.shape
        x = families.embed(self.model, tokens, pos) if emb is None else emb
        if record:
            record(0, x)
        resid = x
        if self.rotary is not None:
            cos, sin = mdl.rotary_emb(x, pos)
        t_idx = torch.arange(T)
        causal = (t_idx[None, :, None] >= t_idx[None, None, :]) & mask[:, None, :]  # [B, t, j]
        grp = H // KVH
        for l, layer in enumerate(mdl.layers):
            vis = causal
            if self.windows[l]:
                vis = vis & (t_idx[None, :, None] - t_idx[None, None, :] < self.windows[l])
            at = layer.self_attn
            W, bias = families.qkv_weight_bias(layer)  # q|k|v rows, whatever the family's layout
            w1 = layer.input_layernorm.weight
            ln1 = layer.input_layernorm if self.learned_pos else (lambda x: self.norm(x, w1, self.eps))

            def proj(x, r0):  # one head's rows of the projection
                y = x @ W[r0:r0 + HD].T
                return y if bias is None else y + bias[r0:r0 + HD]
            qs, ks, vs = [], [], []
            for h in range(H):
                xn = ln1(read(self.g.q(l, h), resid))
                qs.append(proj(xn, h * HD))
            for g in range(KVH):
                xn = ln1(read(self.g.k(l, g), resid))
                ks.append(proj(xn, H * HD + g * HD))
                xn = ln1(read(self.g.v(l, g), resid))
                vs.append(proj(xn, (H + KVH) * HD + g * HD))
            q = torch.stack(qs, 1)  # [B,H,T,HD]
            k = torch.stack(ks, 1)
            v = torch.stack(vs, 1)
            q, k = families.qk_norm(layer, q, k)  # Qwen3: per head over head_dim, before rotary
            if self.rotary is not None:
                q, k = self.rotary(q, k, cos, sin)
            k = k.repeat_interleave(grp, 1)
            v = v.repeat_interleave(grp, 1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
            s = s.masked_fill(~vis[:, None], float("-inf"))
            p = torch.softmax(s, -1).nan_to_num(0.0)
            z = p @ v  # [B,H,T,HD]
            Wo = families.linear_weight(at.o_proj)  # [D, H*HD]
            heads = []
            for h in range(H):
                a = z[:, h] @ Wo[:, h * HD:(h + 1) * HD].T
                if record:
                    record(self.g.head(l, h), a)
                heads.append(a)
            resid = resid + sum(heads)
            if at.o_proj.bias is not None:  # not a node: the same in every run
                resid = resid + at.o_proj.bias
            if self.learned_pos:  # GPT-2: LayerNorm, c_fc, gelu_new, c_proj
                xm = layer.post_attention_layernorm(read(self.g.mlp_in(l), resid))
                mo = layer.mlp.down_proj(layer.mlp.act(layer.mlp.c_fc(xm)))
            else:
                xm = self.norm(read(self.g.mlp_in(l), resid), layer.post_attention_layernorm.weight, self.eps)
                gate, up = families.gate_up(layer, xm)
                mo = layer.mlp.down_proj(torch.nn.functional.silu(gate) * up)
            if record:
                record(self.g.mlp_out(l), mo)
            resid = resid + mo
        xf = (mdl.norm(read(self.g.logits(), resid)) if self.learned_pos
              else self.norm(read(self.g.logits(), resid), mdl.norm.weight, self.eps))
        return self.model.lm_head(xf)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", help="only these config names (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model_dir0 = os.path.join(ROOT, "data/models/tiny-temporal-phi3")
    tok = mr.Tok(model_dir0)
    with open(os.path.join(ROOT, "data/temporal_scope_for_attribution_patching.json")) as f:
        pairs = json.load(f)
    batches0 = mr.build_batches(tok, pairs)
    configs = [("tiny-temporal", model_dir0, batches0)]
    for spec in mr.RANDOM_CONFIGS:  # each with its own tokenizer where it has one
        stok = mr.config_tok(spec, tok)
        configs.append((spec["name"], os.path.join(ROOT, "data/reference", spec["name"], "model"),
                        batches0 if stok is tok else mr.build_batches(stok, pairs)))
    for name, mdir, batches in configs:
        if args.only and name not in args.only:
            continue
        ans = torch.tensor(batches["answer_ids"])
        oth = torch.tensor(batches["other_ids"])
        model = mr.load_model(mdir)
        if families.post_norms(model.model.layers[0]):  # Gemma 2: no additive circuit graph
            print(f"{name}: skipped (post-norms; the engine refuses circuits on this architecture)")
            continue
        nm = NodeModel(model)
        g = nm.g
        clean_b, corr_b = batches["clean"], batches["corrupted"]
        with torch.no_grad():
            hf = model(input_ids=clean_b["tokens"], attention_mask=clean_b["mask"], position_ids=clean_b["pos"]).logits
        acts = {}

        def recorder(store):
            return lambda u, a: store.__setitem__(u, a.detach())

        plain = lambda v, r: r  # noqa: E731
        A_clean, A_corr = {}, {}
        with torch.no_grad():
            lg_clean = nm.run(clean_b, plain, record=recorder(A_clean))
            lg_corr = nm.run(corr_b, plain, record=recorder(A_corr))
        err = float((lg_clean[:, -1] - hf[:, -1]).abs().max())
        assert err < 1e-4, f"{name}: per-node forward differs from transformers by {err}"
        ld_clean = float(mr.logit_diff(lg_clean, ans, oth).mean())
        ld_corr = float(mr.logit_diff(lg_corr, ans, oth).mean())
        scale = 1.0 / (ld_clean - ld_corr)
        print(f"[{name}] L={g.L} H={g.H} KVH={g.KVH} U={g.U} Dn={g.Dn} LD clean {ld_clean:.6f} corr {ld_corr:.6f} "
              f"(per-node forward vs transformers: {err:.1e})", flush=True)

        def grads_at(batch, emb=None):
            leaves = {}

            def read(v, r):
                z = torch.zeros_like(r, requires_grad=True)
                leaves[v] = z
                return r + z

            with torch.enable_grad():
                e = None if emb is None else emb.detach()
                lg = nm.run(batch, read, emb=e)
                m = (mr.logit_diff(lg, ans, oth).mean() - ld_corr) * scale
                m.backward()
            return {v: leaves[v].grad.detach() for v in leaves}

        valid = g.valid()

        def scores_from(diff, grads):
            S = torch.zeros(g.U, g.Dn, dtype=torch.float64)
            for u in range(g.U):
                for v in range(g.Dn):
                    if valid[u, v]:
                        S[u, v] = float((diff[u].double() * grads[v].double()).sum())
            return S

        diff_dn = {u: A_clean[u] - A_corr[u] for u in A_clean}
        diff_no = {u: A_corr[u] - A_clean[u] for u in A_clean}
        eap_dn = scores_from(diff_dn, grads_at(corr_b))
        eap_no = scores_from(diff_no, grads_at(clean_b))
        # EAP-IG: the same batch layout, input embeddings interpolated (positions and masks of
        # the corrupted batch: the pairs share T, pads may differ; the interpolated run uses the
        # corrupted batch's masks and positions).
        x_clean, x_corr = A_clean[0], A_corr[0]
        acc = None
        for k in range(IG_STEPS):
            a = k / IG_STEPS
            gk = grads_at(corr_b, emb=x_corr + a * (x_clean - x_corr))
            acc = gk if acc is None else {v: acc[v] + gk[v] for v in acc}
        ig = {v: acc[v] / IG_STEPS for v in acc}
        ig_dn = scores_from(diff_dn, ig)

        # Exact circuits: clean input, edges outside the circuit carry the corrupted value.
        def circuit_ld(mask):
            cur = {}

            def read(v, r):
                out = r
                for u in range(g.U):
                    if valid[u, v] and not mask[u, v]:
                        out = out - (cur[u] - A_corr[u])
                return out

            with torch.no_grad():
                lg = nm.run(clean_b, read, record=lambda u, a: cur.__setitem__(u, a))
            return mr.logit_diff(lg, ans, oth)

        circuits = []
        full = valid.clone()
        empty = torch.zeros_like(valid)
        circuits.append(("full", full))
        circuits.append(("empty", empty))
        flat = ig_dn.abs().masked_fill(~valid, -1).flatten()
        order = torch.argsort(flat, descending=True, stable=True)
        for i in range(3):
            u, v = divmod(int(order[i]), g.Dn)
            m = full.clone()
            m[u, v] = False
            circuits.append((f"full less {u}->{v}", m))
        n_edges = int(valid.sum())
        for k in sorted({max(1, n_edges // 20), max(1, n_edges // 5), max(1, n_edges // 2)}):
            m = torch.zeros(g.U * g.Dn, dtype=torch.bool)
            m[order[:k]] = True
            m = g.prune(m.view(g.U, g.Dn))
            circuits.append((f"top {k} by |EAP-IG| pruned", m))
        out_c = []
        for cname, m in circuits:
            ld = circuit_ld(m)
            edges = [[int(u), int(v)] for u, v in m.nonzero().tolist()]
            out_c.append({"name": cname, "edges": edges, "n_edges": len(edges), "logit_diff": float(ld.mean()),
                          "logit_diff_per_row": [float(x) for x in ld]})
            print(f"  circuit {cname}: {len(edges)} edges, LD {float(ld.mean()):.6f}", flush=True)
        assert abs(out_c[0]["logit_diff"] - ld_clean) < 1e-4 and abs(out_c[1]["logit_diff"] - ld_corr) < 1e-4

        def dense(S):
            return [float(x) for x in S.flatten()]

        meta = {
            "format": "phi3patch circuit reference 1",
            "generated_by": "tools/circuit_reference.py",
            "config": name, "L": g.L, "H": g.H, "KVH": g.KVH, "upstream": g.U, "downstream": g.Dn,
            "n_edges": n_edges, "ig_steps": IG_STEPS, "B": batches["B"], "T": batches["T"],
            "clean_logit_diff": ld_clean, "corrupted_logit_diff": ld_corr,
            "node_forward_vs_transformers_max_abs": err,
            "scores_layout": "dense [upstream, downstream] row-major, 0 where there is no edge",
            "eap_denoise": dense(eap_dn), "eap_noise": dense(eap_no), "eap_ig_denoise": dense(ig_dn),
            "circuits": out_c,
        }
        out = os.path.join(ROOT, "data/reference", name, "circuit.json")
        with open(out + ".tmp", "w") as f:
            json.dump(meta, f)
            f.write("\n")
        os.replace(out + ".tmp", out)
        print(f"  wrote {out} ({os.path.getsize(out) // 1024} KiB)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
