#!/usr/bin/env python3
"""Train the tiny Phi-3 temporal-scope model used by phi3patch's tests and demos.

Run after tools/make_dataset.py:
    python3 tools/train_tiny_model.py

Steps (all seeded, CPU only, a few minutes on 2 cores):
  1. trains a SentencePiece BPE tokenizer (Llama-style, byte_fallback) on the dataset text;
  2. writes data/temporal_scope_pairs.json: 48 short/long pairs on the patching template, token
     aligned (same token count) where possible;
  3. trains a 4-layer Phi3ForCausalLM (d=64) to answer " short" / " long" at the last position
     of "The goal is to {goal}. Is this a short-term or long-term goal? The answer is:" on the
     train split, until held-out accuracy >= 97% and every pair of both pair files is answered
     correctly with |logit diff| > 1;
  4. saves data/models/tiny-temporal-phi3/ (config.json, model.safetensors, tokenizer.model,
     added_tokens.json, tokenizer_config.json, special_tokens_map.json, training_report.json).
"""
import json
import os
import random
import shutil
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch

SEED = 1234
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
OUT_DIR = os.path.join(DATA, "models", "tiny-temporal-phi3")
TEMPLATE = "The goal is to {goal}. Is this a short-term or long-term goal? The answer is:"
SP_VOCAB = 1024
ADDED_TOKENS = ["<|endoftext|>", "<|end|>"]
N_PAIRS = 48
MAX_STEPS = 4000
EVAL_EVERY = 50
MIN_MARGIN = 1.0
TARGET_HELDOUT_ACC = 0.97


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(items, seed_pairs):
    text = []
    for it in items:
        text.append(it["question"])
        text.append(TEMPLATE.format(goal=it["goal"]) + " " + it["horizon"])
    for p in seed_pairs:
        for side in ("clean", "corrupted"):
            text.append(p[side]["question"] + " " + p[side]["answer"])
    tmp = tempfile.mkdtemp()
    cwd = os.getcwd()
    os.chdir(tmp)  # relative paths: the trainer spec stored in tokenizer.model stays byte-stable
    try:
        corpus = "corpus.txt"
        with open(corpus, "w") as f:
            for t in text:
                for line in t.split("\n"):
                    if line.strip():
                        f.write(line + "\n")
        prefix = "sp"
        base = dict(
            input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=SP_VOCAB,
            character_coverage=1.0, byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            num_threads=1, minloglevel=2,
        )
        spm.SentencePieceTrainer.train(**base)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        if len(sp.encode("short")) != 1 or len(sp.encode("long")) != 1:
            log("retraining tokenizer with user_defined_symbols for answer words")
            spm.SentencePieceTrainer.train(**base, user_defined_symbols=["\u2581short", "\u2581long"])
        os.makedirs(OUT_DIR, exist_ok=True)
        shutil.copy(prefix + ".model", os.path.join(OUT_DIR, "tokenizer.model"))
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT_DIR, "tokenizer.model"))
    assert len(sp.encode("short")) == 1 and len(sp.encode("long")) == 1
    assert sp.id_to_piece(sp.encode("short")[0]) == "\u2581short"
    assert sp.id_to_piece(sp.encode("long")[0]) == "\u2581long"
    assert sp.unk_id() == 0 and sp.bos_id() == 1 and sp.eos_id() == 2 and sp.pad_id() == -1
    return sp


def encode(sp, prompt):
    return [sp.bos_id()] + sp.encode(prompt)


# ----------------------------------------------------------------------------- pairs file
def make_pairs(sp, items, seed_pairs):
    """N_PAIRS (short, long) pairs, each goal used once, the seed-pair goals excluded.
    Token-aligned pairs (equal prompt length) first; length-mismatched ones only if needed."""
    rng = random.Random(SEED + 1)
    seed_goals = set()
    for p in seed_pairs:
        for side in ("clean", "corrupted"):
            q = p[side]["question"]
            seed_goals.add(q[len("The goal is to "):q.index(". Is this")])
    shorts = [it for it in items if it["horizon"] == "short" and it["goal"] not in seed_goals]
    longs = [it for it in items if it["horizon"] == "long" and it["goal"] not in seed_goals]
    rng.shuffle(shorts)
    rng.shuffle(longs)
    length = {it["goal"]: len(encode(sp, TEMPLATE.format(goal=it["goal"]))) for it in items}
    by_len = {}
    for it in longs:
        by_len.setdefault(length[it["goal"]], []).append(it)
    pairs, used_s, used_l = [], set(), set()
    for s in shorts:
        if len(pairs) == N_PAIRS:
            break
        cand = by_len.get(length[s["goal"]], [])
        if cand:
            l = cand.pop()
            pairs.append((s, l))
            used_s.add(s["goal"])
            used_l.add(l["goal"])
    n_aligned = len(pairs)
    rest_s = [s for s in shorts if s["goal"] not in used_s]
    rest_l = [l for l in longs if l["goal"] not in used_l]
    while len(pairs) < N_PAIRS:
        pairs.append((rest_s.pop(), rest_l.pop()))
    out = [{"clean": {"question": TEMPLATE.format(goal=s["goal"]), "answer": "short"},
            "corrupted": {"question": TEMPLATE.format(goal=l["goal"]), "answer": "long"}}
           for s, l in pairs]
    n_held = sum((s["split"] == "heldout") + (l["split"] == "heldout") for s, l in pairs)
    with open(os.path.join(DATA, "temporal_scope_pairs.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log(f"pairs: {len(out)} written, {n_aligned} token-aligned, "
        f"{n_held} of {2 * len(out)} prompts from the heldout split")
    return out, n_aligned, n_held


# ----------------------------------------------------------------------------- model
def build_batch(seqs, pad_id):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # TransformerLens offset position ids
    return ids, mask, pos


def last_logits(model, batch):
    ids, mask, pos = batch
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    return out.logits[:, -1, :]


def main():
    torch.set_num_threads(2)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    from transformers import Phi3Config, Phi3ForCausalLM

    with open(os.path.join(DATA, "raw", "temporal_scope_caa.json")) as f:
        items = json.load(f)
    with open(os.path.join(DATA, "temporal_scope_for_attribution_patching.json")) as f:
        seed_pairs = json.load(f)

    sp = train_tokenizer(items, seed_pairs)
    n_sp = sp.get_piece_size()
    added = {t: n_sp + i for i, t in enumerate(ADDED_TOKENS)}
    eot = added["<|endoftext|>"]
    vocab_size = (n_sp + len(ADDED_TOKENS) + 7) // 8 * 8
    id_short, id_long = sp.encode("short")[0], sp.encode("long")[0]
    log(f"tokenizer: {n_sp} pieces, ▁short={id_short} ▁long={id_long} <|endoftext|>={eot} "
        f"vocab_size={vocab_size}")

    pairs, n_aligned, n_pairs_held = make_pairs(sp, items, seed_pairs)

    # training / evaluation sets (labels: 0 = short, 1 = long)
    def ex(goal_or_prompt, horizon, is_prompt=False):
        p = goal_or_prompt if is_prompt else TEMPLATE.format(goal=goal_or_prompt)
        return encode(sp, p), 0 if horizon == "short" else 1

    train = [ex(it["goal"], it["horizon"]) for it in items if it["split"] == "train"]
    heldout = [ex(it["goal"], it["horizon"]) for it in items if it["split"] == "heldout"]
    train_seqs = {tuple(s) for s, _ in train}
    for p in seed_pairs:  # the patching prompts are always trained on (they are train goals)
        for side in ("clean", "corrupted"):
            s, y = ex(p[side]["question"], p[side]["answer"], is_prompt=True)
            assert tuple(s) in train_seqs, p[side]["question"]
    pair_sets = {"attribution_seed_pairs": seed_pairs, "pairs": pairs}
    max_len = max(len(s) for s, _ in train + heldout)
    log(f"train {len(train)}  heldout {len(heldout)}  max prompt length {max_len} tokens")

    config = Phi3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        original_max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=eot,
        pad_token_id=eot, hidden_act="silu", initializer_range=0.02,
        attention_dropout=0.0, embd_pdrop=0.0, resid_pdrop=0.0, use_cache=True,
    )
    config._attn_implementation = "eager"
    model = Phi3ForCausalLM(config).float()
    model.config._attn_implementation = "eager"
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters")

    answer_ids = torch.tensor([id_short, id_long])
    train_batch = build_batch([s for s, _ in train], eot)
    train_y = torch.tensor([y for _, y in train])
    held_batch = build_batch([s for s, _ in heldout], eot)
    held_y = torch.tensor([y for _, y in heldout])

    def accuracy(batch, y):
        with torch.no_grad():
            lg = last_logits(model, batch)[:, answer_ids]
        return ((lg[:, 1] > lg[:, 0]).long() == y).float().mean().item()

    def pair_diffs():
        """logit(▁short) - logit(▁long) at the last position for every pair prompt."""
        res = {}
        with torch.no_grad():
            for name, ps in pair_sets.items():
                seqs = []
                for p in ps:
                    seqs.append(encode(sp, p["clean"]["question"]))
                    seqs.append(encode(sp, p["corrupted"]["question"]))
                lg = last_logits(model, build_batch(seqs, eot))
                d = (lg[:, id_short] - lg[:, id_long]).tolist()
                res[name] = [{"clean": p["clean"]["question"], "corrupted": p["corrupted"]["question"],
                              "clean_short_minus_long": d[2 * i],
                              "corrupted_short_minus_long": d[2 * i + 1]}
                             for i, p in enumerate(ps)]
        return res

    def pairs_ok(res):
        return all(r["clean_short_minus_long"] > MIN_MARGIN and r["corrupted_short_minus_long"] < -MIN_MARGIN
                   for rs in res.values() for r in rs)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    gen = torch.Generator().manual_seed(SEED)
    batch_size = 64
    n = len(train)
    step, done = 0, False
    while step < MAX_STEPS and not done:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            b = build_batch([train[j][0] for j in idx.tolist()], eot)
            model.train()
            lg = last_logits(model, b)
            loss = torch.nn.functional.cross_entropy(lg, answer_ids[train_y[idx]])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % EVAL_EVERY == 0:
                model.eval()
                tr, ho = accuracy(train_batch, train_y), accuracy(held_batch, held_y)
                ok = pairs_ok(pair_diffs())
                log(f"step {step:5d}  loss {loss.item():.4f}  train acc {tr:.4f}  "
                    f"heldout acc {ho:.4f}  pairs ok {ok}")
                if tr == 1.0 and ho >= TARGET_HELDOUT_ACC and ok:
                    done = True
                    break
            if step >= MAX_STEPS:
                break

    model.eval()
    tr, ho = accuracy(train_batch, train_y), accuracy(held_batch, held_y)
    diffs = pair_diffs()
    ok = pairs_ok(diffs)
    log(f"final: steps {step}  train acc {tr:.4f}  heldout acc {ho:.4f}  pairs ok {ok}")
    for r in diffs["attribution_seed_pairs"]:
        log(f"  seed pair LD(short-long): clean {r['clean_short_minus_long']:+.3f}  "
            f"corrupted {r['corrupted_short_minus_long']:+.3f}")
    if not (ho >= TARGET_HELDOUT_ACC and ok):
        log("ERROR: training did not reach the targets")
        sys.exit(1)

    # ------------------------------------------------------------------ save
    model.save_pretrained(OUT_DIR, safe_serialization=True)
    cfg_path = os.path.join(OUT_DIR, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    # Also write the classic (transformers 4.x / Phi-3 hub) top-level keys next to
    # transformers 5's "rope_parameters", so that non-Python loaders find them.
    cfg["rope_theta"] = 10000.0
    cfg["rope_scaling"] = None
    cfg["partial_rotary_factor"] = 1.0
    cfg["torch_dtype"] = "float32"
    cfg["architectures"] = ["Phi3ForCausalLM"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(OUT_DIR, "added_tokens.json"), "w") as f:
        json.dump(added, f, indent=2)
        f.write("\n")
    special = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
               "pad_token": "<|endoftext|>"}
    with open(os.path.join(OUT_DIR, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
        f.write("\n")
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "legacy": False, "model_max_length": 128, "padding_side": "left",
        "clean_up_tokenization_spaces": False, "sp_model_kwargs": {},
        **special,
        "added_tokens_decoder": {
            str(i): {"content": p, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, p in [(0, "<unk>"), (1, "<s>"), (2, "</s>")] + [(v, k) for k, v in added.items()]
        },
    }
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")

    report = {
        "seed": SEED, "steps": step, "batch_size": batch_size, "optimizer": "AdamW lr 3e-3 wd 0.01",
        "loss": "cross-entropy over the full vocabulary at the last position",
        "n_params": n_params, "sp_pieces": n_sp, "vocab_size": vocab_size,
        "token_ids": {"\u2581short": id_short, "\u2581long": id_long, **added,
                      "<unk>": 0, "<s>": 1, "</s>": 2},
        "n_train": len(train), "n_heldout": len(heldout),
        "train_accuracy": tr, "heldout_accuracy": ho,
        "pairs_token_aligned": n_aligned, "pairs_prompts_from_heldout": n_pairs_held,
        "pair_logit_diffs_short_minus_long": diffs,
    }
    with open(os.path.join(OUT_DIR, "training_report.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    log(f"saved {OUT_DIR}")


if __name__ == "__main__":
    main()
