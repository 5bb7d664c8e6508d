"""run_with_cache's result: the activations of one forward pass under TransformerLens names, as
TransformerLens' ActivationCache holds them (cache["blocks.3.hook_resid_pre"], or
cache["resid_pre", 3]), with the batch's tokens and left padding kept beside them (cache.tokens,
cache.pad), not among them."""
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _core
from ._names import did_you_mean

# The hooks of one block, in TransformerLens' names, and the model-wide ones.
BLOCK_HOOKS = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k",
               "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
               "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
MODEL_HOOKS_FIRST = ["hook_embed"]
MODEL_HOOKS_LAST = ["ln_final.hook_normalized"]

# transformer_lens.utils.get_act_name's short names.
_SHORT = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
          "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "q": "attn.hook_q", "k": "attn.hook_k",
          "v": "attn.hook_v", "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k", "z": "attn.hook_z",
          "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores",
          "scores": "attn.hook_attn_scores", "post": "mlp.hook_post", "mlp_post": "mlp.hook_post"}


def all_names(n_layers: int) -> List[str]:
    """Every name run_with_cache can cache, in the order of the forward pass."""
    return MODEL_HOOKS_FIRST + [f"blocks.{l}.{h}" for l in range(n_layers) for h in BLOCK_HOOKS] + MODEL_HOOKS_LAST


def act_name(name: str, layer: Optional[int] = None) -> str:
    """transformer_lens.utils.get_act_name: ('resid_pre', 3) -> 'blocks.3.hook_resid_pre'."""
    if name in ("embed", "hook_embed"):
        return "hook_embed"
    if name in ("normalized", "ln_final", "ln_final.hook_normalized"):
        return "ln_final.hook_normalized"
    inner = _SHORT.get(name, name)
    if layer is None:
        raise KeyError(f"'{name}' needs a layer: cache['{name}', 3]")
    return f"blocks.{layer}.{inner}"


def select(names_filter: Union[None, str, Sequence[str], Callable[[str], bool]], n_layers: int) -> List[str]:
    """The names to cache: None every one (as TransformerLens), a name, a list, or a predicate."""
    every = all_names(n_layers)
    if names_filter is None:
        return every
    if callable(names_filter):
        return [n for n in every if names_filter(n)]
    given = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    known = set(every)
    wanted = []
    for n in given:
        if not isinstance(n, str):
            raise TypeError(f"names_filter: expected hook names (strings), got {type(n).__name__}")
        inner = _SHORT.get(n, n)
        if n not in known and inner in BLOCK_HOOKS:  # a block's hook without a layer: every layer's
            wanted += [f"blocks.{l}.{inner}" for l in range(n_layers)]
            continue
        if n in ("embed", "normalized"):
            n = act_name(n)
        wanted.append(n)
        if n not in known:
            raise _core.Error(f"names_filter: unknown hook name '{n}'{did_you_mean(n, every)} "
                             f"(names as TransformerLens': 'blocks.3.hook_resid_pre', 'blocks.0.attn.hook_z', "
                             f"'hook_embed', 'ln_final.hook_normalized')")
    return list(dict.fromkeys(wanted))


def sources(name: str, n_layers: int) -> List[str]:
    """The engine activations a cached name is made from: itself, or for the names computed here
    (the rest are views of the engine's buffers) what they are computed from."""
    if name == "hook_embed":
        return ["blocks.0.hook_resid_pre"]
    if name == "ln_final.hook_normalized":
        return [f"blocks.{n_layers - 1}.hook_resid_post"]
    if name.endswith("attn.hook_attn_scores"):
        return [name.replace("hook_attn_scores", "hook_rot_q"), name.replace("hook_attn_scores", "hook_rot_k")]
    return [name]


def derive(name: str, src: List[Any], pad: Sequence[int], engine: Any) -> Any:
    """The activation `name` from its sources' values (sources(name)); engine: the model's _core.Engine."""
    if name == "ln_final.hook_normalized":
        return normalized(src[0], engine.rms_norm_eps)
    if name.endswith("attn.hook_attn_scores"):
        scale, softcap, window = engine.attn_params(int(name.split(".")[1]))
        return attn_scores(src[0], src[1], pad, scale, softcap, window)
    return src[0]


class ActivationCache(dict):
    """{TransformerLens name: activation} of one forward pass; cache['resid_pre', 3] also works.
    tokens [B, T] and pad [B] (left-pad count per row) are attributes, not entries."""

    def __init__(self, acts: Dict[str, Any], tokens: np.ndarray, pad: np.ndarray, str_tokens: List[List[str]]) -> None:
        super().__init__(acts)
        self.tokens = tokens
        self.pad = pad
        self.str_tokens = str_tokens

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = act_name(*key)
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            raise KeyError(f"'{key}' is not in this cache{did_you_mean(str(key), list(self))} "
                           f"(run_with_cache(names_filter=None) caches every hook)") from None

    def __repr__(self) -> str:
        return f"<phi3patch.ActivationCache {len(self)} activations, tokens {tuple(self.tokens.shape)}>"


def normalized(resid: Any, eps: float) -> Any:
    """TransformerLens' ln_final.hook_normalized: x / sqrt(mean(x^2) + eps), before the weight."""
    if isinstance(resid, np.ndarray):
        x = resid.astype(np.float32)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    import torch  # type: ignore
    return resid / torch.sqrt(torch.mean(resid * resid, dim=-1, keepdim=True) + eps)


def hidden_keys(pad: Sequence[int], T: int, window: int) -> np.ndarray:
    """[B, T, T] True where query t does not see key j: later keys, pad keys, keys beyond the window."""
    t = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    hidden = (j > t)[None] | (j[None] < np.asarray(pad, dtype=np.int64)[:, None, None])
    if window > 0:
        hidden = hidden | (j < t - window + 1)[None]
    return hidden


def attn_scores(rot_q: Any, rot_k: Any, pad: Sequence[int], scale: float, softcap: float, window: int) -> Any:
    """TransformerLens' attn.hook_attn_scores [B, H, T, T]: the (soft-capped) scaled dot products of
    the rotated queries and keys, -inf where a query does not see a key (hidden_keys)."""
    B, T, H, HD = rot_q.shape
    group = H // rot_k.shape[2]
    hidden = hidden_keys(pad, T, window)[:, None]  # [B, 1, T, T]
    if isinstance(rot_q, np.ndarray):
        q = rot_q.astype(np.float32).transpose(0, 2, 1, 3)                       # B H T d
        k = np.repeat(rot_k.astype(np.float32).transpose(0, 2, 1, 3), group, axis=1)
        s = np.matmul(q, k.transpose(0, 1, 3, 2)) * np.float32(scale)
        if softcap > 0:
            s = np.float32(softcap) * np.tanh(s / np.float32(softcap))
        return np.where(hidden, np.float32(-np.inf), s).astype(np.float32)
    import torch  # type: ignore
    q = rot_q.float().permute(0, 2, 1, 3)
    k = rot_k.float().permute(0, 2, 1, 3).repeat_interleave(group, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    return s.masked_fill(torch.from_numpy(hidden).to(s.device), float("-inf"))
