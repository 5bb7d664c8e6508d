"""The decoder families the engine supports, as the Python tools see them: which transformers
classes build and load each, where its hook points sit, and its layer weights in the engine's
fused layout (q|k|v rows, gate|up rows, biases). make_reference.py, circuit_reference.py and the
baselines go through these helpers instead of naming Phi-3 modules, so a new family is one entry
here (the engine's side is one file in model/arch/).
"""
import importlib

import torch

# model_type -> (config class, model class, modeling module) names in transformers
FAMILIES = {
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "transformers.models.phi3.modeling_phi3"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "transformers.models.qwen2.modeling_qwen2"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", "transformers.models.llama.modeling_llama"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "transformers.models.mistral.modeling_mistral"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "transformers.models.qwen3.modeling_qwen3"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "transformers.models.gemma2.modeling_gemma2"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", "transformers.models.mixtral.modeling_mixtral"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "transformers.models.qwen3_moe.modeling_qwen3_moe"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", "transformers.models.olmoe.modeling_olmoe"),
}


def family_of(model_or_config):
    cfg = getattr(model_or_config, "config", model_or_config)
    mt = cfg.model_type if hasattr(cfg, "model_type") else cfg["model_type"]
    if mt not in FAMILIES:
        raise ValueError(f"unsupported model_type {mt!r} (supported: {', '.join(FAMILIES)})")
    return mt


def classes(family):
    import transformers
    cfg_cls, model_cls, _ = FAMILIES[family]
    return getattr(transformers, cfg_cls), getattr(transformers, model_cls)


def modeling(family):
    return importlib.import_module(FAMILIES[family][2])


def all_modeling():
    return [modeling(f) for f in FAMILIES]


def load_model(model_dir, dtype=torch.float32, attn="eager"):
    """Any supported family from a checkpoint directory (its config.json's model_type)."""
    import json
    import os
    with open(os.path.join(model_dir, "config.json")) as f:
        family = family_of(json.load(f))
    _, model_cls = classes(family)
    model = model_cls.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fused_qkv(layer):
    """True when the layer has one qkv_proj (Phi-3) instead of q_proj, k_proj, v_proj."""
    return hasattr(layer.self_attn, "qkv_proj")


def qkv_modules(layer):
    at = layer.self_attn
    return [at.qkv_proj] if fused_qkv(layer) else [at.q_proj, at.k_proj, at.v_proj]


def qkv_weight_bias(layer):
    """The q|k|v projection as the engine holds it: W [(H+2KVH)*HD, D] and bias (or None)."""
    mods = qkv_modules(layer)
    W = torch.cat([m.weight for m in mods], 0)
    b = None if mods[0].bias is None else torch.cat([m.bias for m in mods], 0)
    return W, b


def post_norms(layer):
    """Gemma 2: an RMSNorm on each block's output before its residual add."""
    return hasattr(layer, "post_feedforward_layernorm")


def attn_residual_module(layer):
    """The module whose output is what the layer adds to the residual stream after attention:
    Phi-3's resid_attn_dropout (identity in eval), Gemma 2's post_attention_layernorm, else
    self_attn itself (output tuple [0])."""
    if post_norms(layer):
        return layer.post_attention_layernorm
    return getattr(layer, "resid_attn_dropout", None) or layer.self_attn


def ln2_module(layer):
    """The MLP's input norm (its input is the residual stream after attention, TL resid_mid)."""
    return layer.pre_feedforward_layernorm if post_norms(layer) else layer.post_attention_layernorm


def mlp_out_module(layer):
    """The module whose output is what the layer adds after the MLP (TL mlp_out)."""
    return layer.post_feedforward_layernorm if post_norms(layer) else layer.mlp


def attn_scale_softcap(model):
    """(score scale, soft-cap or None) of the model's attention (Gemma 2: query_pre_attn_scalar,
    attn_logit_softcapping)."""
    at = model.model.layers[0].self_attn
    return at.scaling, getattr(model.config, "attn_logit_softcapping", None)


def is_moe(layer):
    """A sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE, OLMoE): mlp.gate is its router."""
    return hasattr(layer.mlp, "experts")


def gate_up(layer, x):
    """(gate, up) pre-activations of the MLP for input x."""
    mlp = layer.mlp
    if hasattr(mlp, "gate_up_proj"):
        return mlp.gate_up_proj(x).chunk(2, -1)
    return mlp.gate_proj(x), mlp.up_proj(x)


def qk_norm(layer, q, k):
    """Qwen3's per-head RMSNorm of q and k (over the last dim, head_dim) where the family has
    it: what happens between the q/k projections (TL hook_q/k) and rotary."""
    at = layer.self_attn
    if not hasattr(at, "q_norm"):
        return q, k
    if at.q_norm.weight.shape[0] == q.shape[-1]:
        return at.q_norm(q), at.k_norm(k)

    def full(norm, x):  # OLMoE: one norm over all heads ([B,heads,T,HD] -> [B,T,heads*HD] and back)
        B, h, T, hd = x.shape
        return norm(x.transpose(1, 2).reshape(B, T, h * hd)).view(B, T, h, hd).transpose(1, 2)
    return full(at.q_norm, q), full(at.k_norm, k)


def layer_window(model, l):
    """The sliding window of layer l (0 = none), as transformers applies it."""
    at = model.model.layers[l].self_attn
    if hasattr(at, "sliding_window"):  # Qwen2: per layer (layer_types)
        return at.sliding_window or 0
    return getattr(model.config, "sliding_window", None) or 0
