#!/usr/bin/env python3
"""Generate the Hugging Face `transformers` reference fixtures under data/reference/.

    python3 tools/make_reference.py            # regenerates everything in data/reference/

For every config (the embedded tiny-temporal model plus several seeded random tiny Phi-3
configs covering GQA/MQA, partial rotary, tied embeddings, LongRoPE long/short factors,
sliding window, sharded checkpoints and bf16 storage) it writes

    data/reference/<name>/reference.safetensors   logits, every hook activation of the clean and
                                                  corrupted runs, dM/d(activation) on the
                                                  corrupted run, tokens, pad counts
    data/reference/<name>/reference.json          prompts, ids, metric values, TransformerLens-
                                                  style activation + attribution patching results
    data/reference/<name>/model/                  (random configs only) the checkpoint
    data/reference/<name>/metrics.{json,safetensors}  (METRIC_CONFIGS) the same under --metric
                                                  prob-diff, logprob, kl (--metrics-only: these alone)

See data/reference/README.md for the format. Everything is computed in float32 on the CPU with
attn_implementation="eager"; the script is deterministic (fixed seeds, single thread).
"""

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import sentencepiece as spm
import torch
import transformers
from safetensors.torch import save_file
import families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_HOOKS = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
MIN_LD_GAP = 0.5  # random configs: first seed (from the config's base seed) with |LD_clean - LD_corr| above this

# ----------------------------------------------------------------------------------------------
# Random configs. Each entry: name, what it covers, Phi3Config kwargs, init std, storage dtype,
# shard size (None = single model.safetensors), config.json style, first seed to try.
#   style "hub": the classic Phi-3 hub layout (rope_theta / partial_rotary_factor top level,
#                rope_scaling {"type": ..., short_factor, long_factor} or null, torch_dtype)
#   style "hf5": what transformers 5.x save_pretrained writes (rope_parameters {...}, dtype)
# ----------------------------------------------------------------------------------------------
RANDOM_CONFIGS = [
    # ---- other families (model/arch/): the features that differ from Phi-3 switched on
    {
        "name": "rand-qwen2-bias-swa",
        "family": "qwen2",
        "covers": ["Qwen2ForCausalLM: separate q/k/v projections with non-zero biases, o_proj without",
                   "separate gate_proj / up_proj", "GQA (4 q heads, 2 kv heads)", "rope_theta 1e6",
                   "use_sliding_window with max_window_layers 1: layer 0 full attention, layers 1-2 a "
                   "sliding window of 8 < T", "tie_word_embeddings true", "bf16 storage", "3 layers",
                   "config.json as transformers 5.x writes it"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=256,
                    use_sliding_window=True, sliding_window=8, max_window_layers=1, tie_word_embeddings=True,
                    rms_norm_eps=1e-6),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hf5", "seed": 6000,
    },
    {
        "name": "rand-llama3-rope-bias",
        "family": "llama",
        "covers": ["LlamaForCausalLM: separate q/k/v and gate/up projections",
                   "rope_scaling llama3 (factor 8, low 1, high 4, original_max_position_embeddings 64): "
                   "with head_dim 16 and theta 10000 one frequency kept, two on the smooth ramp, five divided",
                   "attention_bias true (q, k, v and o biases), mlp_bias true (gate, up, down biases)",
                   "GQA (4 q heads, 2 kv heads)", "untied lm_head", "f32, sharded: 2 shards + index",
                   "2 layers", "config.json in the Llama 3.1 hub layout (rope_scaling, torch_dtype)"],
        "cfg": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=256,
                    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64, "rope_type": "llama3"},
                    attention_bias=True, mlp_bias=True, tie_word_embeddings=False, rms_norm_eps=1e-5,
                    pretraining_tp=1),
        "std": 0.3, "dtype": "float32", "shard": "2", "style": "hub", "seed": 7000,
    },
    {
        "name": "rand-qwen3-qknorm",
        "family": "qwen3",
        "covers": ["Qwen3ForCausalLM: per-head q_norm / k_norm (RMSNorm over head_dim before rotary; "
                   "weights 1 + 0.2 N(0,1), not 1)", "head_dim 16 given in config.json, not hidden_size / "
                   "heads = 12", "attention_bias true (q, k, v and o biases)", "GQA (4 q heads, 2 kv heads)",
                   "use_sliding_window with max_window_layers 2: layer 2 a window of 8 < T", "tied",
                   "bf16 storage", "3 layers", "config.json as transformers 5.x writes it"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rope_theta=1000000.0, max_position_embeddings=256,
                    attention_bias=True, use_sliding_window=True, sliding_window=8, max_window_layers=2,
                    tie_word_embeddings=True, rms_norm_eps=1e-6),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hf5", "seed": 9000, "min_gap": 1.5,
    },
    {
        "name": "rand-mixtral-moe",
        "family": "mixtral",
        "covers": ["MixtralForCausalLM: every MLP a sparse MoE block (block_sparse_moe): 4 experts, top-2, "
                   "softmax over the 4 router logits renormalised over the chosen 2",
                   "per-expert w1 / w3 / w2 tensors (hub layout)", "exact patches change later tokens' top-2 "
                   "experts (moe_routing)", "GQA (4 q heads, 2 kv heads)", "sliding_window null", "untied",
                   "f32", "3 layers", "config.json as transformers 5.x writes it"],
        "cfg": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=256,
                    num_local_experts=4, num_experts_per_tok=2, sliding_window=None, tie_word_embeddings=False,
                    rms_norm_eps=1e-5),
        "std": 0.35, "dtype": "float32", "shard": None, "style": "hf5", "seed": 11000, "min_gap": 1.5,
    },
    {
        "name": "rand-qwen3moe",
        "family": "qwen3_moe",
        "covers": ["Qwen3MoeForCausalLM: every MLP a sparse MoE block (mlp.gate, mlp.experts.N.gate_proj / "
                   "up_proj / down_proj): 4 experts of width moe_intermediate_size 64 (intermediate_size 96 "
                   "unused), top-2, norm_topk_prob true", "per-head q_norm / k_norm (weights 1 + 0.2 N(0,1))",
                   "head_dim 12", "GQA (4 q heads, 2 kv heads)", "tied", "bf16 storage", "2 layers",
                   "config.json as transformers 5.x writes it"],
        "cfg": dict(hidden_size=48, intermediate_size=96, moe_intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=12, rope_theta=1000000.0,
                    max_position_embeddings=256, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                    decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=True, rms_norm_eps=1e-6),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hf5", "seed": 12000, "min_gap": 1.5,
    },
    {
        "name": "rand-olmoe",
        "family": "olmoe",
        "covers": ["OlmoeForCausalLM: every MLP a sparse MoE block (mlp.gate, mlp.experts.N.*): 4 experts, "
                   "top-2, norm_topk_prob false (the chosen softmax probabilities unnormalised)",
                   "q_norm / k_norm over the whole q width (48) and k width (24), not per head",
                   "GQA (4 q heads, 2 kv heads)", "untied", "f32", "2 layers",
                   "config.json as transformers 5.x writes it"],
        "cfg": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=256, num_experts=4,
                    num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None, tie_word_embeddings=False,
                    rms_norm_eps=1e-5),
        "std": 0.35, "dtype": "float32", "shard": None, "style": "hf5", "seed": 13000, "min_gap": 1.5,
    },
    {
        "name": "rand-gemma2-softcap",
        "family": "gemma2",
        "covers": ["Gemma2ForCausalLM: RMSNorm by (1 + w) (weights 1 + 0.2 N(0,1)), embeddings times sqrt(48)",
                   "post_attention_layernorm / pre_feedforward_layernorm / post_feedforward_layernorm",
                   "GeGLU with gelu_pytorch_tanh", "query_pre_attn_scalar 24 (not head_dim 16)",
                   "attn_logit_softcapping 1.5 and final_logit_softcapping 3.0, both biting at std 0.35",
                   "sliding window 8 < T on layers 0 and 2 (layer_types), full attention on layer 1",
                   "GQA (4 q heads, 2 kv heads)", "tied", "bf16 storage", "3 layers"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=256,
                    hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
                    query_pre_attn_scalar=24, attn_logit_softcapping=1.5, final_logit_softcapping=3.0,
                    sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    attention_bias=False, tie_word_embeddings=True, rms_norm_eps=1e-6),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hf5", "seed": 9500, "min_gap": 1.5,
    },
    {
        "name": "rand-gemma3-dualrope",
        "family": "gemma3_text",
        "covers": ["Gemma3ForCausalLM: Gemma 2's block (RMSNorm by (1 + w), post_attention / pre_feedforward / "
                   "post_feedforward norms, GeGLU with gelu_pytorch_tanh, embeddings times sqrt(48))",
                   "per-head q_norm / k_norm by (1 + w) before rotary (weights 1 + 0.2 N(0,1), not 1)",
                   "two rotary bases: sliding layers rope_local_base_freq 10000 unscaled, full layers "
                   "rope_theta 1e6 with linear scaling factor 8",
                   "layer_types sliding, sliding, full, sliding: windows of 8 < T on layers 0, 1, 3",
                   "query_pre_attn_scalar 24 (not head_dim 16)", "no soft-capping (null)",
                   "GQA (4 q heads, 2 kv heads)", "tied", "bf16 storage", "4 layers",
                   "config.json as transformers 5.x writes it (rope_parameters keyed by layer type)"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                    rope_scaling={"rope_type": "linear", "factor": 8.0}, max_position_embeddings=256,
                    hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
                    query_pre_attn_scalar=24, attn_logit_softcapping=None, final_logit_softcapping=None,
                    sliding_window=8,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                    attention_bias=False, tie_word_embeddings=True, rms_norm_eps=1e-6),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hf5", "seed": 9700, "min_gap": 1.5,
    },
    {
        "name": "rand-gpt2-tiny",
        "family": "gpt2",
        "covers": ["GPT2LMHeadModel: LayerNorm with bias (ln_1, ln_2, ln_f; weights 1 + 0.2 N(0,1), biases "
                   "0.2 N(0,1))", "learned absolute position embeddings wpe (position ids the batch's: 0 at "
                   "each row's first real token), no rotary", "non-gated MLP c_fc, gelu_new, c_proj",
                   "Conv1D weights [in, out], q|k|v fused in c_attn, non-zero biases on every projection",
                   "n_inner null (4 n_embd = 192)", "n_positions 64", "tied lm_head", "f32", "3 layers",
                   "config.json as transformers 5.x writes it (n_embd, n_layer, n_head, transformer. prefix)"],
        "cfg": dict(n_embd=48, n_layer=3, n_head=4, n_inner=None, n_positions=64, layer_norm_epsilon=1e-5,
                    activation_function="gelu_new", tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0),
        "std": 0.35, "dtype": "float32", "shard": None, "style": "hf5", "seed": 12000, "min_gap": 1.5,
    },
    {
        "name": "rand-mistral-swa-hd",
        "family": "mistral",
        "covers": ["MistralForCausalLM", "head_dim 16 given in config.json, not hidden_size / heads = 12",
                   "sliding_window 8 < T on every layer", "MQA (4 q heads, 1 kv head)", "untied lm_head",
                   "bf16 storage", "3 layers", "config.json hub style"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=1, head_dim=16, rope_theta=10000.0, max_position_embeddings=256,
                    sliding_window=8, tie_word_embeddings=False, rms_norm_eps=1e-5),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hub", "seed": 8000,
        # As for rand-phi4mini-bpe: with the first seed above MIN_LD_GAP (a gap of 0.75 logit)
        # bf16 rounding moved the normalized attribution of k by up to 0.49 (CUDA, emulator).
        "min_gap": 1.5,
    },
    {
        "name": "rand-gqa-partial-longrope-sharded",
        "covers": ["GQA (4 q heads, 2 kv heads)", "partial_rotary_factor 0.5 (rotary dim 6 of head_dim 12)",
                   "longrope rope_scaling, LONG factor in use (T > original_max_position_embeddings=8)",
                   "attention factor sqrt(1+ln(128/8)/ln(8)) != 1 (max_position_embeddings 128)",
                   "rope_theta 5000", "sharded checkpoint: 2 shards + model.safetensors.index.json",
                   "f32", "2 layers", "config.json hub style (rope_scaling type longrope)"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=5000.0, partial_rotary_factor=0.5,
                    rope_scaling="longrope", max_position_embeddings=128, original_max_position_embeddings=8,
                    sliding_window=None, tie_word_embeddings=False, rms_norm_eps=1e-5),
        "std": 0.3, "dtype": "float32", "shard": "2", "style": "hub", "seed": 2000,
    },
    {
        "name": "rand-tied-swa-bf16",
        "covers": ["MHA", "tie_word_embeddings true (no lm_head.weight stored)", "sliding_window 8 < T",
                   "bf16 storage (reference computed in f32 from the bf16-rounded weights)",
                   "rms_norm_eps 1e-6", "3 layers", "single model.safetensors",
                   "config.json as written by transformers 5.x save_pretrained (rope_parameters)"],
        "cfg": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=4, rope_theta=10000.0, partial_rotary_factor=1.0,
                    rope_scaling=None, max_position_embeddings=256, original_max_position_embeddings=256,
                    sliding_window=8, tie_word_embeddings=True, rms_norm_eps=1e-6),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hf5", "seed": 3000,
    },
    {
        "name": "rand-mqa-mixed-bf16-sharded",
        "covers": ["MQA (4 q heads, 1 kv head)", "partial_rotary_factor 0.5 (rotary dim 4 of head_dim 8)",
                   "longrope rope_scaling, SHORT factor in use (T <= original_max_position_embeddings=64)",
                   "attention factor sqrt(1+ln(256/64)/ln(64)) != 1 even with the short factor",
                   "sliding_window 12", "tie_word_embeddings true", "bf16 storage",
                   "sharded checkpoint: 2 shards + index", "3 layers",
                   "config.json hub style (rope_scaling type longrope, torch_dtype bfloat16)"],
        "cfg": dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=1, rope_theta=10000.0, partial_rotary_factor=0.5,
                    rope_scaling="longrope", max_position_embeddings=256, original_max_position_embeddings=64,
                    sliding_window=12, tie_word_embeddings=True, rms_norm_eps=1e-5),
        "std": 0.4, "dtype": "bfloat16", "shard": "2", "style": "hub", "seed": 4000,
    },
    {
        # The shape family of microsoft/Phi-4-mini-instruct (24 q heads / 8 kv heads, head_dim
        # 128, rotary 96, tied, longrope with all-1 short factors, sliding_window 262144, bf16,
        # vocab 200064 padded past the tokenizer's 200029) scaled down, with the Phi-4-mini-layout
        # byte-level BPE test tokenizer (no tokenizer.model; no BOS, as its tokenizer_config says).
        "name": "rand-phi4mini-bpe",
        "covers": ["byte-level BPE tokenizer.json only (Phi-4-mini layout: o200k split regex, 12 added "
                   "tokens), no BOS (add_bos_token false), answers ' short' / ' long' (Ġshort, Ġlong)",
                   "vocab padded past the tokenizer (config vocab_size a multiple of 64 above it)",
                   "GQA 3:1 (6 q heads, 2 kv heads)", "partial_rotary_factor 0.75 (rotary dim 6 of head_dim 8)",
                   "tie_word_embeddings true", "longrope with all-1 short factors in use (T <= 64), "
                   "attention factor sqrt(1+ln(128/64)/ln(64))", "sliding_window 262144 (> T)",
                   "bf16 storage", "2 layers", "config.json hub style"],
        "cfg": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                    num_key_value_heads=2, rope_theta=10000.0, partial_rotary_factor=0.75,
                    rope_scaling="longrope-short-ones", max_position_embeddings=128,
                    original_max_position_embeddings=64, sliding_window=262144, tie_word_embeddings=True,
                    rms_norm_eps=1e-5),
        "std": 0.35, "dtype": "bfloat16", "shard": None, "style": "hub", "seed": 5000,
        "tokenizer": "tests/data/bpe/phi-4-mini",
        # A wider clean-corrupted gap than MIN_LD_GAP: with the first seed above 0.5 (a gap of
        # 0.56 logit) bf16 rounding moved the normalized patching effects by up to 0.48.
        "min_gap": 1.5,
    },
]


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------
# Tokenization / batches
# ----------------------------------------------------------------------------------------------
class Tok:
    """The embedded model's SentencePiece tokenizer; prompts start with BOS <s>."""
    files = ("tokenizer.model", "added_tokens.json")
    add_bos = True
    bos_id = 1

    def __init__(self, tok_dir):
        self.dir = tok_dir
        self.sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
        with open(os.path.join(tok_dir, "added_tokens.json")) as f:
            self.added = json.load(f)
        self.pad_id = int(self.added["<|endoftext|>"])
        self.vocab_size = max(self.sp.get_piece_size(), max(int(v) for v in self.added.values()) + 1)
        assert self.sp.id_to_piece(1) == "<s>", f"id 1 is {self.sp.id_to_piece(1)!r}, expected <s>"

    def prompt(self, text):
        return [1] + self.sp.encode(text)

    def answer(self, word):
        ids = self.sp.encode(word)
        assert len(ids) == 1, f"answer {word!r} encodes to {ids} ({self.sp.encode(word, out_type=str)}), not one id"
        return ids[0]


class BpeTok:
    """A byte-level BPE tokenizer.json (Hugging Face tokenizers); BOS as its tokenizer_config.json
    says; answers are words after a space (" short" -> Ġshort), as the engine encodes them."""
    files = ("tokenizer.json", "tokenizer_config.json")

    def __init__(self, tok_dir):
        from tokenizers import Tokenizer
        self.dir = tok_dir
        self.tk = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
        with open(os.path.join(tok_dir, "tokenizer_config.json")) as f:
            cfg = json.load(f)
        self.add_bos = bool(cfg.get("add_bos_token", False))
        self.bos_id = self.tk.token_to_id(cfg["bos_token"])
        self.pad_id = self.tk.token_to_id(cfg.get("pad_token") or cfg["eos_token"])
        n = self.tk.get_vocab_size(with_added_tokens=True)
        self.vocab_size = (n // 64 + 1) * 64  # the embedding padded past the tokenizer, as real checkpoints do

    def prompt(self, text):
        return ([self.bos_id] if self.add_bos else []) + self.tk.encode(text, add_special_tokens=False).ids

    def answer(self, word):
        enc = self.tk.encode(" " + (word[1:] if word.startswith(" ") else word), add_special_tokens=False)
        assert len(enc.ids) == 1, f"answer {word!r} encodes to {enc.ids} ({enc.tokens}), not one id"
        return enc.ids[0]


def config_tok(spec, default_tok):
    """The tokenizer of a random config: its own (spec["tokenizer"]) or the embedded model's."""
    return BpeTok(os.path.join(ROOT, spec["tokenizer"])) if spec.get("tokenizer") else default_tok


def build_batches(tok, pairs):
    assert len(pairs) >= 1
    clean_rows, corr_rows = [], []
    for pr in pairs:
        clean_rows += [pr["clean"], pr["corrupted"]]
        corr_rows += [pr["corrupted"], pr["clean"]]
    clean_prompts = [r["question"] for r in clean_rows]
    corr_prompts = [r["question"] for r in corr_rows]
    answer_ids = [tok.answer(r["answer"]) for r in clean_rows]
    other_ids = [tok.answer(r["answer"]) for r in corr_rows]
    clean_ids = [tok.prompt(p) for p in clean_prompts]
    corr_ids = [tok.prompt(p) for p in corr_prompts]
    T = max(len(x) for x in clean_ids + corr_ids)

    def pad(rows):
        B = len(rows)
        tokens = torch.full((B, T), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        npad = []
        for b, ids in enumerate(rows):
            n = T - len(ids)
            tokens[b, n:] = torch.tensor(ids)
            mask[b, n:] = 1
            npad.append(n)
        pos = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)
        return {"tokens": tokens, "mask": mask, "pos": pos, "pad": npad}

    return {
        "clean_prompts": clean_prompts, "corr_prompts": corr_prompts,
        "clean_ids": clean_ids, "corr_ids": corr_ids,
        "answer_ids": answer_ids, "other_ids": other_ids, "T": T, "B": len(clean_rows), "pad_id": tok.pad_id,
        "bos": tok.add_bos,
        "clean": pad(clean_ids), "corrupted": pad(corr_ids),
    }


# ----------------------------------------------------------------------------------------------
# Hooked HF model
# ----------------------------------------------------------------------------------------------
_ACTIVE = None  # the Hooked instance whose attention capture is on
_RUNNING = None  # the Hooked instance running a forward (pattern patches)


def _make_eager_wrapper(mod):
    orig = mod.eager_attention_forward

    def wrapper(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out, weights = orig(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if _RUNNING is not None and _RUNNING._patching("pattern", module.layer_idx):
            # TL hook_pattern patch: the head's pattern row(s) replaced, z recomputed from them
            # (attn_output = weights @ repeat_kv(value), as HF eager does after the softmax).
            pt = _RUNNING.patch
            weights = weights.clone()
            src = pt.src["pattern"][pt.layer]
            ps = slice(None) if pt.pos is None else slice(pt.pos, pt.pos + 1)
            weights[:, pt.head, ps, :] = src[:, pt.head, ps, :].to(weights.dtype)
            vs = mod.repeat_kv(value, module.num_key_value_groups) if hasattr(mod, "repeat_kv") else value
            out = torch.matmul(weights.to(value.dtype), vs).transpose(1, 2).contiguous()
        if _ACTIVE is not None:
            _ACTIVE._on_attention(module.layer_idx, query, key, weights)
        return out, weights
    return wrapper


for _mod in families.all_modeling():  # every family's eager attention reports to the hooks
    _mod.eager_attention_forward = _make_eager_wrapper(_mod)


class Patch:
    """Replace hook `hook` of layer `layer` at position `pos` (None = all positions), head `head`
    (z, q, k, v; None = all heads) in every batch row by the value in `src` (a captured cache;
    per-head hooks in TL layout [B,T,heads,HD])."""

    def __init__(self, hook, layer, pos, head, src):
        self.hook, self.layer, self.pos, self.head, self.src = hook, layer, pos, head, src

    def apply_(self, t, hd=None, qkv_off=None):
        """In-place patch of t ([B,T,D], z as [B,T,H*HD], or the qkv_proj output [B,T,(H+2KVH)*HD]
        for q/k/v: qkv_off = (first column, heads) of the hook's part), under no_grad."""
        src = self.src[self.hook][self.layer]
        ps = slice(None) if self.pos is None else slice(self.pos, self.pos + 1)
        if qkv_off is not None:  # TL hook_q / hook_k / hook_v: the pre-rotary projection
            B, T = t.shape[:2]
            off, heads = qkv_off
            tv = t.narrow(-1, off, heads * hd).view(B, T, heads, hd)
            hs = slice(None) if self.head is None else slice(self.head, self.head + 1)
            tv[:, ps, hs, :] = src[:, ps, hs, :]
        elif self.hook == "mlp_post":  # TL mlp.hook_post: one neuron (self.head) of [B,T,F]
            t[:, ps, self.head] = src[:, ps, self.head]
        elif self.hook == "z":
            B, T = t.shape[:2]
            tv = t.view(B, T, -1, hd)
            hs = slice(None) if self.head is None else slice(self.head, self.head + 1)
            tv[:, ps, hs, :] = src[:, ps, hs, :]
        else:
            t[:, ps, :] = src[:, ps, :]


class Hooked:
    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.L = cfg.num_hidden_layers
        self.H = cfg.num_attention_heads
        self.KVH = cfg.num_key_value_heads
        self.HD = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.capture = False
        self.grad = False
        self.patch = None
        self.zero_pad_z = True
        self.drop_layer = None  # GradDrop: zero the gradient of this layer's attention/MLP outputs
        self.qmask = None
        self.cache = None
        for l, layer in enumerate(model.model.layers):
            layer.register_forward_pre_hook(self._mk_resid_pre(l), with_kwargs=True)
            if not families.post_norms(layer):  # Gemma 2: captured after its post-norm (the patch hook)
                layer.self_attn.register_forward_hook(self._mk_attn_out_cap(l))
            families.attn_residual_module(layer).register_forward_hook(self._mk_attn_out_patch(l))
            families.ln2_module(layer).register_forward_pre_hook(self._mk_resid_mid(l))
            families.mlp_out_module(layer).register_forward_hook(self._mk_out_hook(l, "mlp_out"))
            layer.register_forward_hook(self._mk_out_hook(l, "resid_post"))
            if families.fused_qkv(layer):
                layer.self_attn.qkv_proj.register_forward_hook(self._mk_qkv(l))
            else:
                for name, mod, heads in (("q", layer.self_attn.q_proj, self.H), ("k", layer.self_attn.k_proj, self.KVH),
                                         ("v", layer.self_attn.v_proj, self.KVH)):
                    mod.register_forward_hook(self._mk_proj(l, name, heads))
            layer.self_attn.o_proj.register_forward_pre_hook(self._mk_z(l))
            if families.is_moe(layer):  # the router's top-k experts of every token, every run
                layer.mlp.gate.register_forward_hook(self._mk_router(l))
            else:
                layer.mlp.down_proj.register_forward_pre_hook(self._mk_mlp_post(l))
        self.routing = [None] * self.L  # MoE: [B*T, k] expert ids of the last run

    # -- capture helpers
    def _store(self, name, l, t):
        if self.capture:
            if self.grad and t.requires_grad:
                t.retain_grad()
            self.cache[name][l] = t

    def _patching(self, name, l):
        return self.patch is not None and self.patch.hook == name and self.patch.layer == l

    # -- hooks
    def _mk_resid_pre(self, l):
        def hook(mod, args, kwargs):
            if args:
                hs = args[0]
            else:
                hs = kwargs["hidden_states"]
            if self._patching("resid_pre", l):
                hs = hs.clone()
                self.patch.apply_(hs)
                if args:
                    args = (hs,) + tuple(args[1:])
                else:
                    kwargs = dict(kwargs, hidden_states=hs)
            self._store("resid_pre", l, hs)
            return args, kwargs
        return hook

    def _mk_attn_out_cap(self, l):
        def hook(mod, inp, out):
            self._store("attn_out", l, out[0])
        return hook

    def _mk_attn_out_patch(self, l):
        # What the layer adds to the residual after attention (families.attn_residual_module):
        # Phi-3's resid_attn_dropout (Dropout, p=0, eval: identity), else self_attn's output[0]
        def hook(mod, inp, out):
            t = out[0] if isinstance(out, tuple) else out
            if self.drop_layer == l and t.requires_grad:
                t.register_hook(torch.zeros_like)
            patched = self._patching("attn_out", l)
            if patched:
                t = t.clone()
                self.patch.apply_(t)
            if families.post_norms(self.model.model.layers[l]):
                self._store("attn_out", l, t)
            if patched:
                return (t,) + tuple(out[1:]) if isinstance(out, tuple) else t
        return hook

    def _mk_resid_mid(self, l):
        # The input of post_attention_layernorm IS the tensor used as the residual for the MLP add
        # (`residual = hidden_states` right before), so an in-place patch changes both: exact TL
        # hook_resid_mid semantics. Patched runs run under no_grad, so in-place is safe.
        def hook(mod, args):
            hs = args[0]
            if self._patching("resid_mid", l):
                assert not torch.is_grad_enabled()
                self.patch.apply_(hs)
            self._store("resid_mid", l, hs)
        return hook

    def _mk_out_hook(self, l, name):
        def hook(mod, inp, out):
            if self._patching(name, l):
                out = out.clone()
                self.patch.apply_(out)
            if name == "mlp_out" and self.drop_layer == l and out.requires_grad:
                out.register_hook(torch.zeros_like)  # GradDrop (runs before retain_grad's hook)
            self._store(name, l, out)
            return out
        return hook

    def _mk_qkv(self, l):
        H, KVH, HD = self.H, self.KVH, self.HD
        offs = {"q": (0, H), "k": (H * HD, KVH), "v": ((H + KVH) * HD, KVH)}

        def hook(mod, inp, out):
            for name, off in offs.items():
                if self._patching(name, l):
                    out = out.clone()
                    self.patch.apply_(out, HD, off)
            self._store("qkv", l, out)
            return out
        return hook

    def _mk_proj(self, l, name, heads):
        # separate q_proj / k_proj / v_proj (Qwen2, Llama, Mistral): TL hook_q/k/v are their outputs
        def hook(mod, inp, out):
            if self._patching(name, l):
                out = out.clone()
                self.patch.apply_(out, self.HD, (0, heads))
            self._store(name + "_proj", l, out)
            return out
        return hook

    def _mk_z(self, l):
        def hook(mod, args):
            z = args[0]  # [B,T,H*HD]
            if self.zero_pad_z:
                # engine convention: z = 0 on pad query rows (HF eager gives a uniform attention over
                # all-masked rows there). Real rows are untouched (multiplied by exactly 1.0) and no
                # real row ever reads a pad row, so this only pins down the implementation-defined pads.
                z = z * self.qmask[:, :, None].to(z.dtype)
            if self._patching("z", l):
                z = z.clone()
                self.patch.apply_(z, self.HD)
            self._store("z", l, z)
            return (z,)
        return hook

    def _mk_mlp_post(self, l):
        def hook(mod, args):
            a = args[0]  # [B,T,F] silu(gate) * up, the input of down_proj
            if self._patching("mlp_post", l):
                a = a.clone()
                self.patch.apply_(a)
            self._store("mlp_post", l, a)
            return (a,)
        return hook

    def _mk_router(self, l):
        # out = (router logits [B*T, E], gate weights [B*T, k], expert ids [B*T, k]). A router
        # patch replaces the logits and routes again exactly as the router does (softmax in
        # float, top-k, renormalised iff the router does), so the experts follow the patch.
        def hook(mod, args, out):
            logits, scores, idx = out
            if self._patching("router", l):
                B, T = self.qmask.shape
                logits = logits.clone()
                self.patch.apply_(logits.view(B, T, -1))
                probs = torch.nn.functional.softmax(logits, dtype=torch.float, dim=-1)
                top, idx = torch.topk(probs, mod.top_k, dim=-1)
                if getattr(mod, "norm_topk_prob", True):  # (Mixtral's router always renormalises)
                    top = top / top.sum(dim=-1, keepdim=True)
                scores = top.to(logits.dtype)
                out = (logits, scores, idx)
            self._store("router", l, logits)
            self.routing[l] = idx.detach().clone()
            return out
        return hook

    def _on_attention(self, l, query, key, weights):
        self._store("rot_q", l, query)  # [B,H,T,HD] after rotary
        self._store("rot_k", l, key)  # [B,KVH,T,HD] after rotary
        self._store("pattern", l, weights)  # [B,H,T,T]

    # -- run
    def run(self, batch, capture=False, grad=False, patch=None):
        global _ACTIVE, _RUNNING
        self.capture, self.grad, self.patch = capture, grad, patch
        self.qmask = batch["mask"]
        if capture:
            self.cache = {k: [None] * self.L for k in
                          BLOCK_HOOKS + ["qkv", "q_proj", "k_proj", "v_proj", "z", "rot_q", "rot_k", "pattern",
                                         "mlp_post", "router"]}
        _ACTIVE = self if capture else None
        _RUNNING = self
        try:
            out = self.model(input_ids=batch["tokens"], attention_mask=batch["mask"],
                             position_ids=batch["pos"], use_cache=False)
        finally:
            _ACTIVE = None
            _RUNNING = None
            self.patch = None
        return out.logits

    def split_cache(self, cache, grads=False):
        """cache (tensors or their .grad) -> dict of TL hook name -> [L] tensors in TL layout."""
        H, KVH, HD = self.H, self.KVH, self.HD
        get = (lambda t: t.grad if t.grad is not None else torch.zeros_like(t)) if grads else (lambda t: t)
        res = {}
        for name in BLOCK_HOOKS:
            res["hook_" + name] = [get(t).detach().clone() for t in cache[name]]
        res["attn.hook_q"], res["attn.hook_k"], res["attn.hook_v"] = [], [], []
        if cache["qkv"][0] is None:  # separate projections
            for name, heads in (("q", H), ("k", KVH), ("v", KVH)):
                for t in cache[name + "_proj"]:
                    g = get(t).detach()
                    res["attn.hook_" + name].append(g.reshape(g.shape[0], g.shape[1], heads, HD).clone())
        for t in ([] if cache["qkv"][0] is None else cache["qkv"]):
            g = get(t).detach()
            B, T = g.shape[:2]
            res["attn.hook_q"].append(g[..., :H * HD].reshape(B, T, H, HD).clone())
            res["attn.hook_k"].append(g[..., H * HD:(H + KVH) * HD].reshape(B, T, KVH, HD).clone())
            res["attn.hook_v"].append(g[..., (H + KVH) * HD:].reshape(B, T, KVH, HD).clone())
        res["attn.hook_rot_q"] = [get(t).detach().transpose(1, 2).contiguous() for t in cache["rot_q"]]
        res["attn.hook_rot_k"] = [get(t).detach().transpose(1, 2).contiguous() for t in cache["rot_k"]]
        res["attn.hook_z"] = [get(t).detach().reshape(t.shape[0], t.shape[1], H, HD).clone() for t in cache["z"]]
        res["attn.hook_pattern"] = [get(t).detach().clone() for t in cache["pattern"]]
        if cache["router"][0] is not None:  # MoE: router logits [B*T, E] as [B, T, E]
            B, T = cache["resid_pre"][0].shape[:2]
            res["mlp.hook_router"] = [get(t).detach().reshape(B, T, -1).clone() for t in cache["router"]]
        if cache["mlp_post"][0] is not None:  # (a MoE model has no single MLP's neurons)
            res["mlp.hook_post"] = [get(t).detach().clone() for t in cache["mlp_post"]]
        return res


# ----------------------------------------------------------------------------------------------
# Metric
# ----------------------------------------------------------------------------------------------
def qk_fix_reference(hk, batch, acts, grads, src, L, H, KVH, HD, T):
    """AtP* QK-fix estimates per batch row: {q: [B,L,T,H], q_all_pos: [B,L,H], k: [B,L,T,KVH],
    k_all_pos: [B,L,KVH]} (float64 tensors)."""
    pad = torch.tensor(batch["pad"])
    tq, tk = torch.arange(T)[None, :, None], torch.arange(T)[None, None, :]
    vis_all = (tk <= tq) & (tk >= pad[:, None, None]) & (tq >= pad[:, None, None])

    def visible(l):  # [B,1,T,T], with layer l's sliding window
        win = families.layer_window(hk.model, l)
        return (vis_all & (tq - tk < win) if win > 0 else vis_all)[:, None]
    scale, cap = families.attn_scale_softcap(hk.model)
    group = H // KVH

    def scores(a, b):  # scaled (and soft-capped, Gemma 2) scores a b^T
        s = a @ b.transpose(-1, -2) * scale
        return cap * torch.tanh(s / cap) if cap else s

    def softmax_vis(s):
        p = torch.softmax(s.masked_fill(~vis, float("-inf")), dim=-1)
        return torch.nan_to_num(p) * vis  # rows without a visible key (pad queries): 0

    def source_rotated(hook, l):
        """The clean pre-rotary q/k of layer l rotated at the corrupted run's positions: the
        rotary output of a corrupted run whose hook_q/hook_k is the clean one."""
        saved = hk.cache
        with torch.no_grad():
            hk.run(batch, capture=True, patch=Patch(hook, l, None, None, src))
        t = hk.cache["rot_" + hook][l].detach().double()  # [B,heads,T,HD]
        hk.cache = saved
        return t

    out = {"q": [], "q_all_pos": [], "k": [], "k_all_pos": []}
    for l in range(L):
        vis = visible(l)
        q = acts["attn.hook_rot_q"][l].double().transpose(1, 2)  # [B,H,T,HD]
        k = acts["attn.hook_rot_k"][l].double().transpose(1, 2).repeat_interleave(group, dim=1)
        A = acts["attn.hook_pattern"][l].double() * vis
        G = grads["attn.hook_pattern"][l].double() * vis
        qn = source_rotated("q", l)
        kn = source_rotated("k", l).repeat_interleave(group, dim=1)
        q_est = ((softmax_vis(scores(qn, k)) - A) * G).sum(-1)  # [B,H,T]
        k_all = ((softmax_vis(scores(q, kn)) - A) * G).sum(-1).sum(-1)  # [B,H]
        S = (A * G).sum(-1, keepdim=True)
        # One key p moved in row t: weights e_j = exp(s_j - m) of the base scores, the other
        # keys' total summed directly (leave-one-out, no cancellation in saturated rows).
        s_old = scores(q, k).masked_fill(~vis, float("-inf"))
        s_new = scores(q, kn)
        m = s_old.amax(-1, keepdim=True).clamp(min=-1e30)  # rows without keys: finite
        e_old = torch.exp(s_old - m)
        e_new = torch.exp((s_new - m).clamp(max=700.0)) * vis
        others = (e_old[..., None, :] * (1.0 - torch.eye(T, dtype=e_old.dtype))).sum(-1)  # [B,H,T,T(p)]
        z_old, z_new = others + e_old, others + e_new
        ok = vis & (z_old > 0) & (z_new > 0)
        A_p = torch.where(ok, e_old / z_old, torch.zeros_like(A))
        term = torch.where(ok, (e_old - e_new) / z_new * (S - A_p * G) + (e_new / z_new - A_p) * G,
                           torch.zeros_like(A))
        k_est = term.sum(dim=2)  # over rows t: [B,H,T(key)]
        B = A.shape[0]
        k_est = k_est.view(B, KVH, group, T).sum(2)  # [B,KVH,T]
        k_all = k_all.view(B, KVH, group).sum(2)  # [B,KVH]
        out["q"].append(q_est.transpose(1, 2))  # [B,T,H]
        out["q_all_pos"].append(q_est.sum(2))  # [B,H]
        out["k"].append(k_est.transpose(1, 2))  # [B,T,KVH]
        out["k_all_pos"].append(k_all)  # [B,KVH]
    return {k: torch.stack(v, dim=1) for k, v in out.items()}  # layer after the batch row


def linear_per_prompt(clean_acts, corr_acts, grads, L):
    """AtP estimates per batch row for every hook but q/k: {name: [B,L,...]} (float64)."""
    out = {}
    for hook in BLOCK_HOOKS:
        key = "hook_" + hook
        out[hook] = torch.stack([((clean_acts[key][l] - corr_acts[key][l]).double() * grads[key][l]).sum(-1)
                                 for l in range(L)], dim=1)  # [B,L,T]
    for hook in ("z", "v"):
        key = "attn.hook_" + hook
        per = torch.stack([((clean_acts[key][l] - corr_acts[key][l]).double() * grads[key][l]).sum(-1)
                           for l in range(L)], dim=1)  # [B,L,T,heads]
        out[hook] = per
        out[hook + "_all_pos"] = per.sum(2)
    if "mlp.hook_post" in clean_acts:
        out["mlp_post"] = torch.stack([(clean_acts["mlp.hook_post"][l] - corr_acts["mlp.hook_post"][l]).double()
                                       * grads["mlp.hook_post"][l] for l in range(L)], dim=1)  # [B,L,T,F]
    if "pattern_masked" in clean_acts:  # hook_pattern [B,H,T,T], pad query rows 0 (engine convention)
        per = torch.stack([((clean_acts["pattern_masked"][l] - corr_acts["pattern_masked"][l]).double()
                            * grads["attn.hook_pattern"][l]).sum(-1).transpose(1, 2)
                           for l in range(L)], dim=1)  # [B,L,T,H]
        out["pattern"] = per
        out["pattern_all_pos"] = per.sum(2)
    return out


def atp_star_reference(hk, batch, run_metric, clean_acts, corr_acts, src, L, H, KVH, HD, T):
    """AtP* (Kramar et al. 2024): sum_b 1/(L-1) sum_l |I_l(n, b)| with GradDrop at layer l (the
    gradient of layer l's attention and MLP outputs set to 0 by tensor hooks), I_l the linear
    estimate, QK-fixed for q and k nodes. {hook name: nested lists in the result layout}."""
    emb = hk.model.model.embed_tokens
    acc = {}
    for drop in range(L):
        emb.weight.requires_grad_(True)
        hk.drop_layer = drop
        try:
            with torch.enable_grad():
                run_metric(hk.run(batch, capture=True, grad=True)).backward()
        finally:
            hk.drop_layer = None
            emb.weight.requires_grad_(False)
        g = hk.split_cache(hk.cache, grads=True)
        est = linear_per_prompt(clean_acts, corr_acts, g, L)
        est.update(qk_fix_reference(hk, batch, corr_acts, g, src, L, H, KVH, HD, T))
        for name, v in est.items():
            acc[name] = acc.get(name, 0) + v.abs()
    return {name: (v.sum(0) / max(1, L - 1)).tolist() for name, v in acc.items()}


def logit_diff(logits, ans, oth):
    last = logits[:, -1, :]
    b = torch.arange(last.shape[0])
    return last[b, ans] - last[b, oth]  # [B]


# ----------------------------------------------------------------------------------------------
# The other metrics of `phi3patch run --metric` (model/metric.h): metrics.json and
# metrics.safetensors beside reference.json, for METRIC_CONFIGS. reference.json (the logit
# difference) is untouched by them.
# ----------------------------------------------------------------------------------------------
METRIC_CONFIGS = ["tiny-temporal", "rand-gemma2-softcap"]  # a trained Phi-3; Gemma 2's final soft-cap
OTHER_METRICS = ["prob-diff", "logprob", "kl"]
METRIC_HOOKS = ["resid_pre", "attn_out", "mlp_out", "z"]  # activation + attribution patching
METRIC_STAR_HOOKS = ["resid_pre", "z", "k"]  # AtP* (k: through the QK fix)
METRIC_GRAD_HOOKS = ["hook_resid_pre", "hook_resid_mid", "attn.hook_z", "attn.hook_v"]


def metric_values(kind, logits, ans, oth, ref_lp):
    """[B] metric of the last position in float64 from the (float32) logits [B,T,V]; ref_lp:
    the clean run's last-position log-softmax [B,V] (kl)."""
    lp = torch.log_softmax(logits[:, -1, :].double(), dim=-1)
    b = torch.arange(lp.shape[0])
    if kind == "prob-diff":
        return lp[b, ans].exp() - lp[b, oth].exp()
    if kind == "logprob":
        return lp[b, ans]
    if kind == "kl":  # KL(p_clean || p_run), 0 log 0 = 0
        q = ref_lp.exp()
        r = torch.where(q > 0, ref_lp, torch.zeros_like(ref_lp))  # no -inf, so no NaN gradient
        return (q * (r - lp)).sum(-1)
    raise ValueError(kind)


def metric_reference(name, model_dir, out_dir, batches):
    """For every metric of OTHER_METRICS, with PyTorch autograd on the transformers model: the
    clean / corrupted values per prompt, dM/d(activation) on the corrupted run (M the normalized
    metric, (m - m_corr) / (m_clean - m_corr)), activation patching (one patched forward per
    patch), attribution and AtP* of METRIC_HOOKS / METRIC_STAR_HOOKS."""
    torch.manual_seed(0)
    model = load_model(model_dir)
    hk = Hooked(model)
    L, H, KVH, HD = hk.L, hk.H, hk.KVH, hk.HD
    T = batches["T"]
    ans = torch.tensor(batches["answer_ids"])
    oth = torch.tensor(batches["other_ids"])
    clean_b, corr_b = batches["clean"], batches["corrupted"]
    rope_info(model, clean_b)
    with torch.no_grad():
        clean_logits = hk.run(clean_b, capture=True)
    clean_acts = hk.split_cache(hk.cache)
    with torch.no_grad():
        corr_logits = hk.run(corr_b, capture=True)
    corr_acts = hk.split_cache(hk.cache)
    ref_lp = torch.log_softmax(clean_logits[:, -1, :].double(), dim=-1)
    src = {n: clean_acts["hook_" + n] for n in BLOCK_HOOKS}
    for n in ("z", "q", "k", "v"):
        src[n] = clean_acts["attn.hook_" + n]
    out = {"format_version": 1, "generator": "tools/make_reference.py (metric_reference)", "name": name,
           "position": "last", "normalisation": "(M - M_corrupted) / (M_clean - M_corrupted)",
           "hooks": METRIC_HOOKS, "atp_star_hooks": METRIC_STAR_HOOKS, "gradient_hooks": METRIC_GRAD_HOOKS,
           "metrics": {}}
    tensors = {}
    for kind in OTHER_METRICS:
        mc_pp = metric_values(kind, clean_logits, ans, oth, ref_lp)
        mr_pp = metric_values(kind, corr_logits, ans, oth, ref_lp)
        mc, mr_ = mc_pp.mean(), mr_pp.mean()
        gap = float(mc - mr_)
        check(abs(gap) > 1e-6, f"[{name}] {kind}: clean and corrupted differ")
        if kind == "kl":
            check(float(mc_pp.abs().max()) < 1e-12, f"[{name}] kl of the clean run is 0")

        def run_metric(lg):
            return (metric_values(kind, lg, ans, oth, ref_lp).mean() - mr_) / (mc - mr_)

        emb = model.model.embed_tokens
        emb.weight.requires_grad_(True)
        with torch.enable_grad():
            run_metric(hk.run(corr_b, capture=True, grad=True)).backward()
        emb.weight.requires_grad_(False)
        grads = hk.split_cache(hk.cache, grads=True)
        for key in METRIC_GRAD_HOOKS:
            for l in range(L):
                tensors[f"grad.{kind}.blocks.{l}.{key}"] = grads[key][l].float().contiguous()

        def patched(hook, l, p, h=None):
            with torch.no_grad():
                lg = hk.run(corr_b, patch=Patch(hook, l, p, h, src))
            return float(run_metric(lg))

        res = {}
        for hook in METRIC_HOOKS:
            key = "hook_" + hook if hook in BLOCK_HOOKS else "attn.hook_" + hook
            if hook == "z":
                act = [[[patched("z", l, p, h) for h in range(H)] for p in range(T)] for l in range(L)]
                attr = [((clean_acts[key][l] - corr_acts[key][l]) * grads[key][l]).sum(dim=(0, 3)).tolist()
                        for l in range(L)]
            else:
                act = [[patched(hook, l, p) for p in range(T)] for l in range(L)]
                attr = [((clean_acts[key][l] - corr_acts[key][l]) * grads[key][l]).sum(dim=(0, 2)).tolist()
                        for l in range(L)]
            res[hook] = {"activation": act, "attribution": attr}
        star = atp_star_reference(hk, corr_b, run_metric, clean_acts, corr_acts, src, L, H, KVH, HD, T)
        for hook in METRIC_STAR_HOOKS:
            res.setdefault(hook, {})["atp_star"] = star[hook]
        last = res["resid_pre"]["activation"][L - 1][T - 1]
        log(f"[{name}] {kind}: clean {float(mc):.6f} corrupted {float(mr_):.6f}; resid_pre[L-1] at T-1 -> {last:.6f}")
        out["metrics"][kind] = {"clean": float(mc), "corrupted": float(mr_),
                                "clean_per_prompt": [float(x) for x in mc_pp],
                                "corrupted_per_prompt": [float(x) for x in mr_pp], "patching": res}
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "metrics.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------------------------
# Random model creation
# ----------------------------------------------------------------------------------------------
def make_config(spec, tok):
    if spec.get("family", "phi3") != "phi3":
        return family_config(spec, tok)
    c = dict(spec["cfg"])
    rot_dim = int(c["hidden_size"] // c["num_attention_heads"] * c["partial_rotary_factor"])
    rope_scaling = None
    if c["rope_scaling"] == "longrope":
        g = torch.Generator().manual_seed(spec["seed"] + 17)
        short = (1.0 + 3.0 * torch.rand(rot_dim // 2, generator=g, dtype=torch.float64)).tolist()
        long = (1.0 + 3.0 * torch.rand(rot_dim // 2, generator=g, dtype=torch.float64)).tolist()
        short = [round(x, 6) for x in short]
        long = [round(x, 6) for x in long]
        rope_scaling = {"type": "longrope", "short_factor": short, "long_factor": long}
    elif c["rope_scaling"] == "longrope-short-ones":  # Phi-4-mini: short factors all 1
        g = torch.Generator().manual_seed(spec["seed"] + 17)
        long = [round(x, 6) for x in (1.0 + 3.0 * torch.rand(rot_dim // 2, generator=g, dtype=torch.float64)).tolist()]
        rope_scaling = {"type": "longrope", "short_factor": [1.0] * (rot_dim // 2), "long_factor": long}
    hub = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos_id,
        "embd_pdrop": 0.0,
        "eos_token_id": tok.pad_id,
        "pad_token_id": tok.pad_id,
        "hidden_act": "silu",
        "hidden_size": c["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "original_max_position_embeddings": c["original_max_position_embeddings"],
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": c["num_key_value_heads"],
        "partial_rotary_factor": c["partial_rotary_factor"],
        "resid_pdrop": 0.0,
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_scaling": rope_scaling,
        "rope_theta": c["rope_theta"],
        "sliding_window": c["sliding_window"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "torch_dtype": spec["dtype"],
        "use_cache": True,
        "vocab_size": tok.vocab_size,
    }
    return hub


def family_config(spec, tok):
    """config.json of a non-Phi-3 random config: the family's classes, the common fields, and the
    spec's cfg (literal config.json values: biases, head_dim, rope_scaling, windows)."""
    fam = spec["family"]
    _, model_cls = families.classes(fam)
    hub = {
        "architectures": [model_cls.__name__],
        "model_type": fam,
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.pad_id,
        "pad_token_id": tok.pad_id,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "torch_dtype": spec["dtype"],
        "use_cache": True,
        "vocab_size": tok.vocab_size,
    }
    hub.update(copy.deepcopy(spec["cfg"]))
    return hub


def init_weights(model, seed, std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith(".bias") and ".ln_" in name:  # GPT-2's LayerNorm biases: 0.2 N(0, 1)
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):  # biases (Qwen2 q/k/v, Llama attention_bias / mlp_bias): non-zero
                p.copy_(std * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # RMSNorm weights: around 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def save_random_model(spec, hub_cfg, model_dir, seed, tok):
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(model_dir)
    cfg_cls, model_cls = families.classes(hub_cfg["model_type"])
    cfg = cfg_cls(**{k: copy.deepcopy(v) for k, v in hub_cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    torch.manual_seed(seed)
    model = model_cls(cfg)
    init_weights(model, seed, spec["std"])
    if spec["dtype"] == "bfloat16":
        model = model.to(torch.bfloat16)
    if spec["shard"]:
        # smallest max_shard_size (in 1/16ths of the total) that gives exactly 2 shards
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for i in range(8, 16):
            for f in os.listdir(model_dir):
                os.remove(os.path.join(model_dir, f))
            model.save_pretrained(model_dir, max_shard_size=nbytes * i // 16)
            if sum(f.endswith(".safetensors") for f in os.listdir(model_dir)) == 2:
                break
    else:
        model.save_pretrained(model_dir)
    for extra in ("generation_config.json",):
        pth = os.path.join(model_dir, extra)
        if os.path.exists(pth):
            os.remove(pth)
    if spec["style"] == "hub":
        with open(os.path.join(model_dir, "config.json"), "w") as f:
            json.dump(hub_cfg, f, indent=2)
            f.write("\n")
    for fn in tok.files:
        shutil.copyfile(os.path.join(tok.dir, fn), os.path.join(model_dir, fn))
    files = sorted(os.listdir(model_dir))
    st = [f for f in files if f.endswith(".safetensors")]
    if spec["shard"]:
        assert len(st) == 2 and "model.safetensors.index.json" in files, files
    else:
        assert st == ["model.safetensors"], files
    if hub_cfg["tie_word_embeddings"]:
        from safetensors import safe_open
        for f in st:
            with safe_open(os.path.join(model_dir, f), "pt") as sf:
                assert "lm_head.weight" not in sf.keys(), "tied model stored lm_head.weight"
    return files


def load_model(model_dir):
    return families.load_model(model_dir, torch.float32, "eager")


# ----------------------------------------------------------------------------------------------
# One config
# ----------------------------------------------------------------------------------------------
def rope_info(model, batch):
    if families.learned_positions(model):  # GPT-2: no rotary
        return {"rope_type": "none", "attention_scaling": 1.0, "inv_freq": []}
    re = model.model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    if isinstance(getattr(re, "rope_type", None), dict):  # Gemma 3: one rotary per layer type
        info = {}
        for lt in sorted(re.rope_type):
            re(x, batch["pos"], lt)
            info[lt] = {"rope_type": re.rope_type[lt],
                        "attention_scaling": float(getattr(re, f"{lt}_attention_scaling")),
                        "rope_theta": model.config.rope_parameters[lt]["rope_theta"],
                        "inv_freq": [float(v) for v in getattr(re, f"{lt}_inv_freq")]}
        return info
    re(x, batch["pos"])  # triggers the longrope long/short update exactly as the forward does
    info = {"rope_type": re.rope_type, "attention_scaling": float(re.attention_scaling),
            "inv_freq": [float(v) for v in re.inv_freq]}
    rp = model.config.rope_parameters
    if re.rope_type == "longrope":
        seq_len = int(batch["pos"].max()) + 1
        omax = rp["original_max_position_embeddings"]
        info["seq_len_for_factor_choice"] = seq_len
        info["original_max_position_embeddings"] = omax
        info["factor_used"] = "long" if seq_len > omax else "short"
        base = rp["rope_theta"]
        dim = len(re.inv_freq) * 2
        ext = torch.tensor(rp["long_factor"] if seq_len > omax else rp["short_factor"], dtype=torch.float32)
        expect = 1.0 / (ext * base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        assert torch.equal(expect, re.inv_freq), (expect, re.inv_freq)
        f = model.config.max_position_embeddings / omax
        att = math.sqrt(1 + math.log(f) / math.log(omax)) if f > 1 else 1.0
        assert abs(att - re.attention_scaling) < 1e-12
    return info


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    log("  ok:", msg)


def process(name, model_dir, out_dir, batches, pairs_rel, covers, extra_meta):
    torch.manual_seed(0)
    model = load_model(model_dir)
    hk = Hooked(model)
    L, H, KVH, HD = hk.L, hk.H, hk.KVH, hk.HD
    T, B = batches["T"], batches["B"]
    ans = torch.tensor(batches["answer_ids"])
    oth = torch.tensor(batches["other_ids"])
    clean_b, corr_b = batches["clean"], batches["corrupted"]
    log(f"[{name}] L={L} H={H} KVH={KVH} HD={HD} D={model.config.hidden_size} V={model.config.vocab_size} T={T} B={B}")
    assert model.config.vocab_size >= max(max(batches["answer_ids"]), max(batches["other_ids"])) + 1

    rinfo = rope_info(model, clean_b)

    # ---- clean run (capture, no grad)
    with torch.no_grad():
        clean_logits = hk.run(clean_b, capture=True)
    clean_cache_raw = hk.cache
    clean_acts = hk.split_cache(clean_cache_raw)
    ld_clean_pp = logit_diff(clean_logits, ans, oth)
    ld_clean = ld_clean_pp.mean()

    # ---- corrupted run without grad for the baseline metric
    with torch.no_grad():
        corr_logits_ng = hk.run(corr_b)
    ld_corr_pp = logit_diff(corr_logits_ng, ans, oth)
    ld_corr = ld_corr_pp.mean()
    denom = float(ld_clean - ld_corr)
    log(f"  LD_clean={float(ld_clean):.6f} LD_corr={float(ld_corr):.6f} diff={denom:.6f}")

    def metric_of(ld_mean):
        return (ld_mean - ld_corr) / (ld_clean - ld_corr)

    # ---- corrupted run with grad
    emb = model.model.embed_tokens
    emb.weight.requires_grad_(True)  # so that every activation requires grad
    with torch.enable_grad():
        corr_logits = hk.run(corr_b, capture=True, grad=True)
        M = metric_of(logit_diff(corr_logits, ans, oth).mean())
        M.backward()
    emb.weight.requires_grad_(False)
    corr_cache_raw = hk.cache
    corr_acts = hk.split_cache(corr_cache_raw)
    grads = hk.split_cache(corr_cache_raw, grads=True)
    check(torch.equal(corr_logits.detach(), corr_logits_ng), "corrupted logits identical with/without grad")
    corr_logits = corr_logits.detach()

    # ---- sanity checks of the hook placement
    real = {k: (b["mask"].bool()) for k, b in (("clean", clean_b), ("corrupted", corr_b))}
    for run, acts in (("clean", clean_acts), ("corrupted", corr_acts)):
        # bitwise: HF computes residual + dropout(attn_out) / residual + dropout(mlp_out) in f32
        e1 = all(torch.equal(acts["hook_resid_mid"][l], acts["hook_resid_pre"][l] + acts["hook_attn_out"][l]) for l in range(L))
        e2 = all(torch.equal(acts["hook_resid_post"][l], acts["hook_resid_mid"][l] + acts["hook_mlp_out"][l]) for l in range(L))
        e3 = max([0.0] + [float((acts["hook_resid_pre"][l + 1] - acts["hook_resid_post"][l]).abs().max()) for l in range(L - 1)])
        check(e1, f"{run}: resid_mid == resid_pre + attn_out (bitwise)")
        check(e2, f"{run}: resid_post == resid_mid + mlp_out (bitwise)")
        check(e3 == 0.0, f"{run}: resid_pre[l+1] == resid_post[l]")
        # rotary from HF's apply_rotary_pos_emb on the captured pre-rotary q/k
        bb = clean_b if run == "clean" else corr_b
        rotary = not families.learned_positions(model)  # GPT-2: rot_q/rot_k are q/k
        er = 0.0
        for l in range(L):
            if rotary:
                cos, sin = families.rotary_cos_sin(model, acts["hook_resid_pre"][0], bb["pos"], l)
            q = acts["attn.hook_q"][l].transpose(1, 2)
            k = acts["attn.hook_k"][l].transpose(1, 2)
            q, k = families.qk_norm(model.model.layers[l], q, k)  # Qwen3: normalized before rotary
            rq, rk = (families.modeling(families.family_of(model)).apply_rotary_pos_emb(q, k, cos, sin)
                      if rotary else (q, k))
            er = max(er, float((rq.transpose(1, 2) - acts["attn.hook_rot_q"][l]).abs().max()),
                     float((rk.transpose(1, 2) - acts["attn.hook_rot_k"][l]).abs().max()))
        check(er == 0.0, f"{run}: captured rot_q/rot_k == apply_rotary_pos_emb(q, k, cos, sin)")
        # z = pattern @ v on real rows
        ez = 0.0
        m = real[run]
        for l in range(L):
            v = acts["attn.hook_v"][l].repeat_interleave(H // KVH, dim=2)  # [B,T,H,HD]
            z = torch.einsum("bhqk,bkhd->bqhd", acts["attn.hook_pattern"][l], v)
            ez = max(ez, float((z - acts["attn.hook_z"][l])[m].abs().max()))
        check(ez <= 1e-5, f"{run}: z == pattern @ v on real rows (max err {ez:.2e})")
    # real-row outputs are unaffected by the pad-row z convention
    hk.zero_pad_z = False
    with torch.no_grad():
        pure_logits = hk.run(corr_b, capture=True)
        pure_pattern = [t.clone() for t in hk.cache["pattern"]]
        pure_z = [t.clone() for t in hk.cache["z"]]
    hk.zero_pad_z = True
    m = real["corrupted"]
    check(torch.equal(pure_logits[m], corr_logits[m]),
          "real-row logits bitwise identical with and without z=0 on pad query rows")
    pad_rows_finite = all(bool(torch.isfinite(t).all()) for t in pure_z) and bool(torch.isfinite(pure_logits).all())
    pad_note = None
    npad0 = max(corr_b["pad"])
    if npad0 > 0:
        b0 = int(np.argmax(corr_b["pad"]))
        row = pure_pattern[0][b0, 0, 0]  # pad query 0 of the most padded row
        pad_note = {"row": b0, "pattern_pad_query0": [round(float(x), 6) for x in row],
                    "all_finite": pad_rows_finite}
        log(f"  HF pad-query row pattern (row {b0}, head 0, q=0): {[round(float(x), 4) for x in row[:6]]}... "
            f"sum={float(row.sum()):.4f} finite={pad_rows_finite}")
    # sliding window rule, read off the eager pattern
    windows = [families.layer_window(model, l) for l in range(L)]
    if any(windows):
        ok = True
        for run, acts, bb in (("clean", clean_acts, clean_b), ("corrupted", corr_acts, corr_b)):
            for l in range(L):
                sw = windows[l] or 10 ** 9
                P = acts["attn.hook_pattern"][l]
                for b in range(B):
                    n = bb["pad"][b]
                    for t in range(n, T):
                        for j in range(T):
                            visible = (j <= t) and (t - j < sw) and (j >= n)
                            ok &= bool(((P[b, :, t, j] > 0) if visible else (P[b, :, t, j] == 0)).all())
        check(ok, f"sliding windows {windows} per layer: key j visible to query t iff j <= t and t - j < window "
              "(and j not pad)")

    # ---- unpadded single-prompt runs vs the padded batch (TL position semantics)
    alone_err = 0.0
    for bb, rows in ((clean_b, batches["clean_ids"]), (corr_b, batches["corr_ids"])):
        full = clean_logits if bb is clean_b else corr_logits
        for b, ids in enumerate(rows):
            t = torch.tensor([ids])
            one = {"tokens": t, "mask": torch.ones_like(t), "pos": torch.arange(len(ids))[None]}
            with torch.no_grad():
                lg = hk.run(one)
            alone_err = max(alone_err, float((lg[0, -1] - full[b, -1]).abs().max()))
    log(f"  unpadded-alone vs padded-batch last-position logits: max abs diff {alone_err:.3e}")
    check(alone_err <= 1e-5, "prompt alone (no padding) == padded batch at the last position (<= 1e-5)")
    # rope state back to the batch's (longrope inv_freq depends on the max position of the last call)
    rope_info(model, clean_b)

    # ---- activation patching (denoising), one patched forward per patch
    src = {n: clean_acts["hook_" + n] for n in BLOCK_HOOKS}
    src["z"] = clean_acts["attn.hook_z"]

    def patched(hook, l, p, h=None):
        with torch.no_grad():
            lg = hk.run(corr_b, patch=Patch(hook, l, p, h, src))
        pp = logit_diff(lg, ans, oth)
        return float(metric_of(pp.mean())), [float(x) for x in pp]

    patching = {}
    for hook in BLOCK_HOOKS:
        act = [[None] * T for _ in range(L)]
        ppl = [[None] * T for _ in range(L)]
        attr = [[None] * T for _ in range(L)]
        key = "hook_" + hook
        for l in range(L):
            diff = clean_acts[key][l] - corr_acts[key][l]
            a = (diff * grads[key][l]).sum(dim=(0, 2))  # [T]
            for p in range(T):
                act[l][p], ppl[l][p] = patched(hook, l, p)
                attr[l][p] = float(a[p])
        patching[hook] = {"activation": act, "attribution": attr, "activation_per_prompt_logit_diff": ppl}
    # z per head by position
    act = [[[None] * H for _ in range(T)] for _ in range(L)]
    ppl = [[[None] * H for _ in range(T)] for _ in range(L)]
    attr = [[[None] * H for _ in range(T)] for _ in range(L)]
    act_all = [[None] * H for _ in range(L)]
    ppl_all = [[None] * H for _ in range(L)]
    attr_all = [[None] * H for _ in range(L)]
    for l in range(L):
        prod = (clean_acts["attn.hook_z"][l] - corr_acts["attn.hook_z"][l]) * grads["attn.hook_z"][l]  # [B,T,H,HD]
        a = prod.sum(dim=(0, 3))  # [T,H]
        for p in range(T):
            for h in range(H):
                act[l][p][h], ppl[l][p][h] = patched("z", l, p, h)
                attr[l][p][h] = float(a[p, h])
        for h in range(H):
            act_all[l][h], ppl_all[l][h] = patched("z", l, None, h)
            attr_all[l][h] = float(a[:, h].sum())
    patching["z"] = {"activation": act, "attribution": attr, "activation_per_prompt_logit_diff": ppl}
    patching["z_all_pos"] = {"activation": act_all, "attribution": attr_all, "activation_per_prompt_logit_diff": ppl_all}
    # q, k, v (pre-rotary, TL hook_q/k/v; k and v per KV head) by position and all positions
    for hook in ("q", "k", "v"):
        key = "attn.hook_" + hook
        src[hook] = clean_acts[key]
        nh = H if hook == "q" else KVH
        act = [[[None] * nh for _ in range(T)] for _ in range(L)]
        ppl = [[[None] * nh for _ in range(T)] for _ in range(L)]
        attr = [[[None] * nh for _ in range(T)] for _ in range(L)]
        act_all = [[None] * nh for _ in range(L)]
        ppl_all = [[None] * nh for _ in range(L)]
        attr_all = [[None] * nh for _ in range(L)]
        for l in range(L):
            a = ((clean_acts[key][l] - corr_acts[key][l]) * grads[key][l]).sum(dim=(0, 3))  # [T,nh]
            for p in range(T):
                for h in range(nh):
                    act[l][p][h], ppl[l][p][h] = patched(hook, l, p, h)
                    attr[l][p][h] = float(a[p, h])
            for h in range(nh):
                act_all[l][h], ppl_all[l][h] = patched(hook, l, None, h)
                attr_all[l][h] = float(a[:, h].sum())
        patching[hook] = {"activation": act, "attribution": attr, "activation_per_prompt_logit_diff": ppl}
        patching[hook + "_all_pos"] = {"activation": act_all, "attribution": attr_all,
                                       "activation_per_prompt_logit_diff": ppl_all}

    # hook_pattern (TL attn.hook_pattern [B,H,T,T]) by (layer, query position, head) and all
    # query positions: the source rows are the clean run's pattern with its pad query rows 0
    # (the engine's convention, as stored); z is recomputed from the patched pattern.
    for run_acts, bb in ((clean_acts, clean_b), (corr_acts, corr_b)):
        run_acts["pattern_masked"] = [t * bb["mask"][:, None, :, None].to(t.dtype) for t in run_acts["attn.hook_pattern"]]
    src["pattern"] = clean_acts["pattern_masked"]
    act = [[[None] * H for _ in range(T)] for _ in range(L)]
    ppl = [[[None] * H for _ in range(T)] for _ in range(L)]
    act_all = [[None] * H for _ in range(L)]
    ppl_all = [[None] * H for _ in range(L)]
    lin = linear_per_prompt(clean_acts, corr_acts, grads, L)
    for l in range(L):
        for p in range(T):
            for h in range(H):
                act[l][p][h], ppl[l][p][h] = patched("pattern", l, p, h)
        for h in range(H):
            act_all[l][h], ppl_all[l][h] = patched("pattern", l, None, h)
    patching["pattern"] = {"activation": act, "attribution": lin["pattern"].sum(0).tolist(),
                           "activation_per_prompt_logit_diff": ppl}
    patching["pattern_all_pos"] = {"activation": act_all, "attribution": lin["pattern_all_pos"].sum(0).tolist(),
                                   "activation_per_prompt_logit_diff": ppl_all}

    # mlp_post (TL mlp.hook_post, the SwiGLU output feeding down_proj) by (layer, position,
    # neuron): every neuron patched alone (no per-prompt lists: L*T*F entries).
    moe = families.is_moe(model.model.layers[0])
    if not moe:
        src["mlp_post"] = clean_acts["mlp.hook_post"]
        F = model.config.intermediate_size
        act = [[[None] * F for _ in range(T)] for _ in range(L)]
        for l in range(L):
            for p in range(T):
                for n in range(F):
                    act[l][p][n] = patched("mlp_post", l, p, n)[0]
        patching["mlp_post"] = {"activation": act, "attribution": lin["mlp_post"].sum(0).tolist()}
    moe_routing = None
    if moe:
        # router (mlp.hook_router, the router logits) by (layer, position): the patched logits
        # route again; attribution = (clean - corrupted logits) . d M / d logits with the routing
        # of the corrupted run held fixed (torch.topk's indices carry no gradient).
        src["router"] = clean_acts["mlp.hook_router"]
        act = [[None] * T for _ in range(L)]
        ppl = [[None] * T for _ in range(L)]
        attr = [[None] * T for _ in range(L)]
        for l in range(L):
            a = ((clean_acts["mlp.hook_router"][l] - corr_acts["mlp.hook_router"][l])
                 * grads["mlp.hook_router"][l]).sum(dim=(0, 2))  # [T]
            for p in range(T):
                act[l][p], ppl[l][p] = patched("router", l, p)
                attr[l][p] = float(a[p])
        patching["router"] = {"activation": act, "attribution": attr, "activation_per_prompt_logit_diff": ppl}
        # Exact patching recomputes the routing downstream of a patch: count the resid_pre[0]
        # patches (one position p, every row) after which some later token (position > p, any
        # layer, any row) routes to another top-k set than in the corrupted run.
        with torch.no_grad():
            hk.run(corr_b)
        base = [r.clone() for r in hk.routing]
        changed, example = [], None
        for p in range(T):
            patched("resid_pre", 0, p)
            n = 0
            for l in range(L):
                a = base[l].sort(-1).values.view(B, T, -1)
                b = hk.routing[l].sort(-1).values.view(B, T, -1)
                diff = (a != b).any(-1)  # [B,T]
                for bb in range(B):
                    for t in range(p + 1, T):
                        if diff[bb, t] and clean_b["mask"][bb, t]:
                            n += 1
                            if example is None:
                                example = {"patch": f"resid_pre layer 0 position {p}", "layer": l, "row": bb,
                                           "position": t, "corrupted_experts": a[bb, t].tolist(),
                                           "patched_experts": b[bb, t].tolist()}
            changed.append(n)
        moe_routing = {"patches": "resid_pre at layer 0, each position (every row)",
                       "patches_changing_routing": sum(1 for n in changed if n),
                       "routed_tokens_changed_per_patch": changed, "example": example}
        check(sum(changed) > 0, "some exact patch changes a later token's top-k experts")
        log(f"  MoE routing: {sum(1 for n in changed if n)} of {T} resid_pre[0] patches change later tokens' "
            f"experts ({sum(changed)} (layer, row, position) in all)")

    # ---- AtP*'s QK fix (Kramar, Lieberum, Shah, Nanda 2024, sec. 3.1), our own float64 PyTorch
    # of the paper's formula: the pattern recomputed exactly with one query (one key) at its clean
    # value, linear after the pattern: sum over changed rows of (A' - A) . dM/dA.
    for name, v in qk_fix_reference(hk, corr_b, corr_acts, grads, src, L, H, KVH, HD, T).items():
        patching[name]["atp_qk"] = v.sum(0).tolist()
    # ---- AtP* = QK fix + GradDrop (sec. 3.2): L more backward passes of the corrupted run
    star = atp_star_reference(hk, corr_b, lambda lg: metric_of(logit_diff(lg, ans, oth).mean()),
                              clean_acts, corr_acts, src, L, H, KVH, HD, T)
    for name, v in star.items():
        patching[name]["atp_star"] = v

    # checks on the patching results
    last = patching["resid_post"]["activation"][L - 1][T - 1]
    check(abs(last - 1.0) <= 1e-5, f"patching resid_post[L-1] at T-1 gives M = 1 (got {last:.9f})")
    lastmid = patching["resid_mid"]["activation"][L - 1][T - 1]
    check(abs(lastmid - 1.0) <= 1e-5, f"patching resid_mid[L-1] at T-1 gives M = 1 (residual patched too; got {lastmid:.9f})")
    first = patching["resid_pre"]["activation"][0]
    # resid_pre[0] at every real position of every row together would give M=1; single positions differ
    # (learned positions, GPT-2: the same position id too, the embedding adds the position's)
    lp = families.learned_positions(model)

    def same_in(b, p):
        return clean_b["tokens"][b, p] == corr_b["tokens"][b, p] and (not lp or clean_b["pos"][b, p] == corr_b["pos"][b, p])
    zero_cells = sum(1 for p in range(T) if all(same_in(b, p) for b in range(B)))
    ez = max(abs(first[p]) for p in range(T) if all(same_in(b, p) for b in range(B))) if zero_cells else 0.0
    check(ez <= 1e-6, f"resid_pre[0] patches at {zero_cells} positions with identical tokens give M = 0 (max |M| {ez:.1e})")

    # ---- dump tensors
    os.makedirs(out_dir, exist_ok=True)
    tensors = {
        "clean.tokens": clean_b["tokens"].to(torch.int32),
        "corrupted.tokens": corr_b["tokens"].to(torch.int32),
        "clean.pad": torch.tensor(clean_b["pad"], dtype=torch.int32),
        "corrupted.pad": torch.tensor(corr_b["pad"], dtype=torch.int32),
        "clean.logits": clean_logits.float(),
        "corrupted.logits": corr_logits.float(),
    }
    for run, acts, bb in (("clean", clean_acts, clean_b), ("corrupted", corr_acts, corr_b), ("grad", grads, corr_b)):
        for key, lst in acts.items():
            if key in ("pattern_masked", "mlp.hook_post"):  # (mlp_post: checked through patching)
                continue
            for l, t in enumerate(lst):
                t = t.float().contiguous()
                if key == "attn.hook_pattern":
                    # pad query rows stored as 0 (consistent with z = 0 there)
                    t = t * bb["mask"][:, None, :, None].float()
                tensors[f"{run}.blocks.{l}.{key}"] = t.contiguous()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"), metadata={"format": "pt"})

    meta = {
        "format_version": 1,
        "generator": "tools/make_reference.py",
        "name": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": os.path.relpath(model_dir, out_dir),
        "pairs_file": pairs_rel,
        "covers": covers,
        "clean_prompts": batches["clean_prompts"],
        "corrupted_prompts": batches["corr_prompts"],
        "clean_token_ids": batches["clean_ids"],
        "corrupted_token_ids": batches["corr_ids"],
        "answer_ids": batches["answer_ids"],
        "other_ids": batches["other_ids"],
        "pad_id": batches["pad_id"],
        "bos": batches["bos"],
        "clean_pad": clean_b["pad"],
        "corrupted_pad": corr_b["pad"],
        "T": T,
        "B": B,
        "dims": {"L": L, "H": H, "KVH": KVH, "HD": HD, "D": model.config.hidden_size,
                 "F": model.config.intermediate_size, "V": model.config.vocab_size},
        "clean_logit_diff": float(ld_clean),
        "corrupted_logit_diff": float(ld_corr),
        "clean_logit_diff_per_prompt": [float(x) for x in ld_clean_pp],
        "corrupted_logit_diff_per_prompt": [float(x) for x in ld_corr_pp],
        "rope": rinfo,
        "family": families.family_of(model),
        "architecture": model.config.architectures[0] if model.config.architectures else None,
        "sliding_window": getattr(model.config, "sliding_window", None),
        "layer_windows": windows,
        "unpadded_vs_padded_max_abs_diff": alone_err,
        "hf_pad_query_rows": pad_note,
        "conventions": {
            "pad_query_rows": "z forced to 0 on pad query rows in every run (engine convention); the stored "
                              "hook_pattern pad query rows are 0 too. Real rows are bitwise what HF eager gives.",
            "resid_mid_patch": "in-place write into the input of post_attention_layernorm, which is also the "
                               "residual of the MLP add (exact TL hook_resid_mid semantics)",
            "attn_out_patch": "what the layer adds to the residual after attention replaced (Phi-3: "
                              "resid_attn_dropout's output (identity, p=0); other families: self_attn's output)",
            "metric": "M = (LD - LD_corr) / (LD_clean - LD_corr); activation = M of the patched corrupted run",
            "grad": "grad.* = dM/d(activation) on the corrupted run (LD_clean, LD_corr constants)",
        },
        "patching": patching,
    }
    if moe_routing is not None:
        meta["moe_routing"] = moe_routing
        meta["dims"]["E"] = model.config.num_local_experts if hasattr(model.config, "num_local_experts") \
            else model.config.num_experts
        meta["dims"]["k"] = model.config.num_experts_per_tok
    meta.update(extra_meta)
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "data/models/tiny-temporal-phi3"))
    ap.add_argument("--pairs", default=os.path.join(ROOT, "data/temporal_scope_for_attribution_patching.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "data/reference"))
    ap.add_argument("--only", action="append", help="only these config names (repeatable)")
    ap.add_argument("--metrics-only", action="store_true",
                    help="only (re)write metrics.json / metrics.safetensors (the --metric references) of "
                         "the configs in METRIC_CONFIGS (and --only), from their existing models")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    tok = Tok(args.model_dir)
    with open(args.pairs) as f:
        pairs = json.load(f)
    pairs_rel = os.path.relpath(os.path.abspath(args.pairs), ROOT)

    def batches_of(t):
        b = build_batches(t, pairs)
        lens = [len(x) for x in b["clean_ids"] + b["corr_ids"]]
        log(f"prompts ({type(t).__name__} {os.path.relpath(t.dir, ROOT)}): lengths {lens}, T={b['T']}, answers "
            f"{b['answer_ids']} others {b['other_ids']}, pad id {t.pad_id}, tokenizer vocab {t.vocab_size}")
        # distance from the end of the last token where the two prompts of a pair differ (right-aligned)
        dist = 0
        for x, y in zip(b["clean_ids"], b["corr_ids"]):
            k = 0
            while k < min(len(x), len(y)) and x[len(x) - 1 - k] == y[len(y) - 1 - k]:
                k += 1
            dist = max(dist, k)
        log(f"last differing token of a pair: {dist} positions before the end")
        return b, lens, dist

    batches, lens, dist = batches_of(tok)
    os.makedirs(args.out, exist_ok=True)
    summary = []

    def want(n):
        return not args.only or n in args.only

    if args.metrics_only:
        for name in METRIC_CONFIGS:
            if not want(name):
                continue
            spec = next((c for c in RANDOM_CONFIGS if c["name"] == name), None)
            stok = tok if spec is None else config_tok(spec, tok)
            mdir = os.path.abspath(args.model_dir) if spec is None else os.path.join(args.out, name, "model")
            metric_reference(name, mdir, os.path.join(args.out, name), batches if stok is tok else batches_of(stok)[0])
        return 0

    if not args.only:  # full regeneration: drop fixture dirs of configs that no longer exist
        known = {"tiny-temporal"} | {s["name"] for s in RANDOM_CONFIGS}
        for d in sorted(os.listdir(args.out)):
            p = os.path.join(args.out, d)
            if d not in known and os.path.isfile(os.path.join(p, "reference.json")):
                log(f"removing stale fixture dir {p}")
                shutil.rmtree(p)

    if want("tiny-temporal"):
        out_dir = os.path.join(args.out, "tiny-temporal")
        meta = process("tiny-temporal", os.path.abspath(args.model_dir), out_dir, batches, pairs_rel,
                       ["the embedded trained model data/models/tiny-temporal-phi3 (as configured there)"], {})
        summary.append(("tiny-temporal", meta))
        if "tiny-temporal" in METRIC_CONFIGS:
            metric_reference("tiny-temporal", os.path.abspath(args.model_dir), out_dir, batches)

    for spec in RANDOM_CONFIGS:
        if not want(spec["name"]):
            continue
        out_dir = os.path.join(args.out, spec["name"])
        model_dir = os.path.join(out_dir, "model")
        stok = config_tok(spec, tok)
        sbatches, lens, dist = (batches, lens, dist) if stok is tok else batches_of(stok)
        if spec["cfg"].get("rope_scaling") == "longrope-short-ones":
            assert max(lens) <= spec["cfg"]["original_max_position_embeddings"]
        if spec["cfg"].get("rope_scaling") == "longrope":
            omax = spec["cfg"]["original_max_position_embeddings"]
            if "LONG" in " ".join(spec["covers"]):
                assert min(lens) > omax, f"{spec['name']}: every prompt must be longer than {omax} (long factor alone too)"
            else:
                assert max(lens) <= omax
        if spec["cfg"].get("sliding_window") is not None and spec["cfg"]["sliding_window"] < max(lens):
            # The last position must be able to see (through L layers of windows) the last token in
            # which a clean and a corrupted prompt differ, else LD_clean == LD_corr. Reach of L
            # layers: L * (W - 1). Widen the window only when the data requires it.
            L = spec["cfg"]["num_hidden_layers"]
            W = max(spec["cfg"]["sliding_window"], math.ceil((dist + 2) / L) + 1)
            assert W < min(lens), f"{spec['name']}: sliding window {W} must be shorter than every prompt {lens}"
            if W != spec["cfg"]["sliding_window"]:
                log(f"[{spec['name']}] sliding_window {spec['cfg']['sliding_window']} -> {W} "
                    f"(last differing token is {dist} before the end)")
                spec = dict(spec, cfg=dict(spec["cfg"], sliding_window=W),
                            covers=[c.replace(f"sliding_window {spec['cfg']['sliding_window']}", f"sliding_window {W}")
                                    for c in spec["covers"]])
        for seed in range(spec["seed"], spec["seed"] + 200):
            hub = make_config(spec, stok)
            save_random_model(spec, hub, model_dir, seed, stok)
            # seed acceptance: |LD_clean - LD_corr| > 0.3
            model = load_model(model_dir)
            hk = Hooked(model)
            ans = torch.tensor(sbatches["answer_ids"])
            oth = torch.tensor(sbatches["other_ids"])
            with torch.no_grad():
                d = float(logit_diff(hk.run(sbatches["clean"]), ans, oth).mean()
                          - logit_diff(hk.run(sbatches["corrupted"]), ans, oth).mean())
            del hk, model
            min_gap = spec.get("min_gap", MIN_LD_GAP)
            if abs(d) > min_gap:
                break
            log(f"[{spec['name']}] seed {seed}: |LD_clean - LD_corr| = {abs(d):.3f} <= {min_gap}, next seed")
        else:
            raise RuntimeError(f"{spec['name']}: no seed with |LD_clean - LD_corr| > {spec.get('min_gap', MIN_LD_GAP)}")
        files = sorted(os.listdir(model_dir))
        meta = process(spec["name"], model_dir, out_dir, sbatches, pairs_rel, spec["covers"],
                       {"seed": seed, "init_std": spec["std"], "storage_dtype": spec["dtype"],
                        "config_json_style": spec["style"], "model_files": files})
        summary.append((spec["name"], meta))
        if spec["name"] in METRIC_CONFIGS:
            metric_reference(spec["name"], model_dir, out_dir, sbatches)

    log("\nsummary:")
    for n, m in summary:
        log(f"  {n:36s} LD_clean={m['clean_logit_diff']:+.6f} LD_corr={m['corrupted_logit_diff']:+.6f} "
            f"T={m['T']} unpadded-vs-padded={m['unpadded_vs_padded_max_abs_diff']:.1e}")
    try:
        log(subprocess.run(["du", "-sh", args.out], capture_output=True, text=True).stdout.strip())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
