#!/usr/bin/env python3
"""TransformerLens as a second reference for the GPT-2 family: builds a HookedTransformer with the
random GPT-2 reference model's config and weights (data/reference/rand-gpt2-tiny/model, loaded
with transformers' GPT2LMHeadModel and converted by TransformerLens' own convert_gpt2_weights,
without folding or centering, so every hook holds the unprocessed value), runs each prompt of
the reference batch alone (its real tokens, positions 0..n-1: TransformerLens' semantics, which
the engine and the reference give left-padded rows) with run_with_cache, and compares every hook
the reference stores (reference.safetensors, the transformers-side values the engine is verified
against) on the real positions.

    python tools/tl_gpt2_check.py [--ref data/reference/rand-gpt2-tiny] [--tol 1e-4]

Needs transformer_lens (a venv of its own: python3 -m venv /work/tlvenv &&
/work/tlvenv/bin/pip install 'transformer-lens<4'). Prints the worst relative error per hook and
exits 1 when one exceeds --tol.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOOKS = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_pattern",
         "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]


def hooked_gpt2(model_dir):
    from transformers import GPT2LMHeadModel
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    hf = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32) if "dtype" in \
        GPT2LMHeadModel.from_pretrained.__code__.co_varnames else GPT2LMHeadModel.from_pretrained(model_dir)
    hf = hf.float().eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False, dtype=torch.float32)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.eval()
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default=os.path.join(ROOT, "data/reference/rand-gpt2-tiny"))
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    from safetensors.torch import load_file
    torch.set_num_threads(1)
    ref = load_file(os.path.join(args.ref, "reference.safetensors"))
    model = hooked_gpt2(os.path.join(args.ref, "model"))
    L = model.cfg.n_layers
    worst = {}
    for run in ("clean", "corrupted"):
        tokens, pad = ref[f"{run}.tokens"], ref[f"{run}.pad"]
        B, T = tokens.shape
        for b in range(B):
            p = int(pad[b])
            toks = tokens[b, p:].long()[None]
            with torch.no_grad():
                logits, cache = model.run_with_cache(toks)
            pairs = [("logits", logits[0], ref[f"{run}.logits"][b, p:])]
            for l in range(L):
                for h in HOOKS:
                    want = ref[f"{run}.blocks.{l}.{h}"][b]
                    want = want[:, p:, p:] if h == "attn.hook_pattern" else want[p:]
                    pairs.append((h, cache[f"blocks.{l}.{h}"][0], want))
            for h, got, want in pairs:
                err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
                worst[h] = max(worst.get(h, 0.0), err)
    ok = True
    for h, e in worst.items():
        flag = "ok" if e <= args.tol else "FAIL"
        ok &= e <= args.tol
        print(f"{flag}: {h:20s} worst rel err {e:.2e} (tol {args.tol:g}) over {L} layers, 2 x {B} prompts")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
