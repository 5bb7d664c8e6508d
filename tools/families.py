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
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", "transformers.models.gemma3.modeling_gemma3"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "transformers.models.gpt2.modeling_gpt2"),
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
    adapt(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def adapt(model):
    """GPT-2 under the Llama module names the tools walk (aliases of the same modules, so hooks
    registered through either name fire): model.model = transformer, .layers = h, .embed_tokens =
    wte, .norm = ln_f; per block self_attn = attn, input_layernorm = ln_1,
    post_attention_layernorm = ln_2, self_attn.qkv_proj = c_attn (q|k|v, one fused projection),
    self_attn.o_proj = attn.c_proj, mlp.down_proj = mlp.c_proj; config.num_key_value_heads = n_head,
    config.intermediate_size = n_inner or 4 n_embd.
    Conv1D weights stay [in, out] (linear_weight transposes). Other families are left as they are."""
    if family_of(model) != "gpt2" or hasattr(model, "model"):
        return model
    tr = model.transformer
    model.model = tr
    tr.layers, tr.embed_tokens, tr.norm = tr.h, tr.wte, tr.ln_f
    for blk in tr.h:
        blk.self_attn, blk.input_layernorm, blk.post_attention_layernorm = blk.attn, blk.ln_1, blk.ln_2
        blk.attn.qkv_proj, blk.attn.o_proj = blk.attn.c_attn, blk.attn.c_proj
        blk.mlp.down_proj = blk.mlp.c_proj
    model.config.num_key_value_heads = model.config.num_attention_heads
    model.config.intermediate_size = model.config.n_inner or 4 * model.config.hidden_size
    return model


def learned_positions(model):
    """GPT-2: learned absolute position embeddings (wpe), no rotary."""
    return hasattr(model.model, "wpe")


def embed(model, tokens, pos):
    """The residual stream's input: token embeddings (+ the position embeddings of `pos` where
    the family learns them; TL hook_embed + hook_pos_embed)."""
    x = model.model.embed_tokens(tokens)
    return x + model.model.wpe(pos) if learned_positions(model) else x


def linear_weight(mod):
    """A projection's weight as [out, in] (GPT-2's Conv1D holds [in, out])."""
    return mod.weight.T if type(mod).__name__ == "Conv1D" else mod.weight


def fused_qkv(layer):
    """True when the layer has one qkv_proj (Phi-3) instead of q_proj, k_proj, v_proj."""
    return hasattr(layer.self_attn, "qkv_proj")


def qkv_modules(layer):
    at = layer.self_attn
    return [at.qkv_proj] if fused_qkv(layer) else [at.q_proj, at.k_proj, at.v_proj]


def qkv_weight_bias(layer):
    """The q|k|v projection as the engine holds it: W [(H+2KVH)*HD, D] and bias (or None)."""
    mods = qkv_modules(layer)
    W = torch.cat([linear_weight(m) for m in mods], 0)
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


def rotary_cos_sin(model, x, pos, l):
    """(cos, sin) that layer l's attention applies (Gemma 3: one table per layer type, the
    sliding layers' local base and the full layers' scaled global base)."""
    re = model.model.rotary_emb
    if isinstance(getattr(re, "rope_type", None), dict):
        return re(x, pos, model.config.layer_types[l])
    return re(x, pos)
