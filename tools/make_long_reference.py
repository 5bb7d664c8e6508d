#!/usr/bin/env python3
"""The long-prompt reference (issue 25): a seeded random tiny Phi-3 with a 4096-token context and
one pair of 2048-token prompts, computed with `transformers` (float32, eager attention, CPU):

    python3 tools/make_long_reference.py        # writes data/reference/long-t2048/

    model/                       the checkpoint (config.json, model.safetensors) and the embedded
                                 model's SentencePiece tokenizer (the engine loads a tokenizer)
    pairs.json                   the pair, pre-tokenized (the engine's pairs format, no BOS)
    long_reference.safetensors   last-position logits of both runs; d metric / d hook_resid_pre of
                                 the corrupted run at every layer and position; AtP of resid_pre,
                                 attn_out, mlp_out ([L, T]) and z ([L, T, H]); exact patching of
                                 resid_pre at the checked positions ([L, P])
    long_reference.json          the metric values, answer ids, the checked positions

The metric is the logit difference at the last position, normalised (LD - LD_corr) /
(LD_clean - LD_corr); gradients are taken on the corrupted run (denoising: clean values patched
into the corrupted run). tests/cpu/test_long_reference.cpp checks the engine against it: the
full pass, the checkpointed pass with streamed attribution, and the sweep of the checked positions.
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "reference", "long-t2048")
TINY = os.path.join(ROOT, "data", "models", "tiny-temporal-phi3")
T = 2048
SEED = 2512
CHANGED = range(1000, 1008)           # positions where the corrupted prompt differs
CHECKED = [0, 500, 999, 1000, 1003, 1007, 1008, 1500, 2046, 2047]  # exact patching of resid_pre


def build_model():
    torch.manual_seed(SEED)
    vocab = json.load(open(os.path.join(TINY, "config.json")))["vocab_size"]
    cfg = transformers.Phi3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                  original_max_position_embeddings=4096, rope_theta=10000.0, sliding_window=None,
                                  pad_token_id=vocab - 8, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                                  rms_norm_eps=1e-5)
    cfg._attn_implementation = "eager"
    model = transformers.Phi3ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # larger weights than the default init, so the far change reaches the end
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def prompts(vocab):
    rng = np.random.default_rng(SEED)
    clean = rng.integers(10, vocab - 10, size=T - 1).tolist()  # the engine prepends BOS (id 1)
    corrupted = list(clean)
    for p in CHANGED:
        corrupted[p - 1] = int((corrupted[p - 1] + 7) % (vocab - 20) + 10)
    return [1] + clean, [1] + corrupted


def main():
    torch.set_num_threads(1)
    model = build_model()
    vocab = model.config.vocab_size
    clean, corrupted = prompts(vocab)
    L, H, HD = model.config.num_hidden_layers, model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads

    def run(ids, patch=None, keep_grad=False):
        acts = {}
        handles = []
        layers = model.model.layers
        for l, layer in enumerate(layers):
            def pre(mod, args, kwargs, l=l):
                x = args[0] if args else kwargs["hidden_states"]
                if patch is not None and patch[0] == l:
                    x = x.clone()
                    x[0, patch[1]] = patch[2]
                    if args:
                        args = (x,) + tuple(args[1:])
                    else:
                        kwargs["hidden_states"] = x
                if keep_grad:
                    x.retain_grad()
                acts[("resid_pre", l)] = x
                return args, kwargs
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))

            def o_pre(mod, args, l=l):
                if keep_grad:
                    args[0].retain_grad()
                acts[("z", l)] = args[0]
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(o_pre))

            def o_out(mod, args, out, l=l):
                if keep_grad:
                    out.retain_grad()
                acts[("attn_out", l)] = out
            handles.append(layer.self_attn.o_proj.register_forward_hook(o_out))

            def m_out(mod, args, out, l=l):
                if keep_grad:
                    out.retain_grad()
                acts[("mlp_out", l)] = out
            handles.append(layer.mlp.register_forward_hook(m_out))
        try:
            logits = model(torch.tensor([ids])).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        return logits, acts

    with torch.no_grad():
        lc, ac = run(clean)
        lr, _ = run(corrupted)
    # The answer: the clean run's top token; the other: the corrupted run's (else its second).
    ans = int(torch.argmax(lc))
    order = torch.argsort(lr, descending=True).tolist()
    oth = order[0] if order[0] != ans else order[1]
    ld_c = float(lc[ans] - lc[oth])
    ld_r = float(lr[ans] - lr[oth])
    assert abs(ld_c - ld_r) > 0.05, (ld_c, ld_r)
    scale = 1.0 / (ld_c - ld_r)

    logits, ar = run(corrupted, keep_grad=True)
    ((logits[ans] - logits[oth]) * scale).backward()
    t = {"logits_clean": lc.float().contiguous(), "logits_corrupted": lr.float().contiguous()}
    grads = []
    for hook in ["resid_pre", "attn_out", "mlp_out", "z"]:
        rows = []
        for l in range(L):
            diff = (ac[(hook, l)] - ar[(hook, l)].detach())[0]
            g = ar[(hook, l)].grad[0]
            if hook == "z":
                rows.append((diff * g).reshape(T, H, HD).sum(-1))
            else:
                rows.append((diff * g).sum(-1))
            if hook == "resid_pre":
                grads.append(g)
        t["atp_" + hook] = torch.stack(rows).float().contiguous()
    t["grad_resid_pre"] = torch.stack(grads).float().contiguous()
    exact = torch.zeros(L, len(CHECKED))
    with torch.no_grad():
        for l in range(L):
            for i, p in enumerate(CHECKED):
                lp, _ = run(corrupted, patch=(l, p, ac[("resid_pre", l)][0, p]))
                exact[l, i] = (float(lp[ans] - lp[oth]) - ld_r) * scale
    t["exact_resid_pre"] = exact.contiguous()

    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "model"))
    model.save_pretrained(os.path.join(OUT, "model"), safe_serialization=True)
    for f in ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]:
        if os.path.exists(os.path.join(TINY, f)):
            shutil.copy(os.path.join(TINY, f), os.path.join(OUT, "model", f))
    gen = os.path.join(OUT, "model", "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    with open(os.path.join(OUT, "pairs.json"), "w") as f:
        json.dump([{"clean": {"ids": clean[1:], "answer_id": ans},
                    "corrupted": {"ids": corrupted[1:], "answer_id": oth}}], f)
    save_file(t, os.path.join(OUT, "long_reference.safetensors"))
    with open(os.path.join(OUT, "long_reference.json"), "w") as f:
        json.dump({"T": T, "answer": ans, "other": oth, "ld_clean": ld_c, "ld_corrupted": ld_r,
                   "checked_positions": CHECKED, "changed_positions": list(CHANGED),
                   "transformers": transformers.__version__, "torch": torch.__version__}, f, indent=1)
    print(f"wrote {OUT}: LD clean {ld_c:.4f}, corrupted {ld_r:.4f}; exact resid_pre at the checked positions:\n{exact}")


if __name__ == "__main__":
    main()
