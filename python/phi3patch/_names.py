"""Names a user types: "did you mean" for every unknown one, TransformerLens hook names
('blocks.3.hook_resid_pre', 'attn.hook_z') beside the short ones ('resid_pre', 'z'), and keyword
arguments checked against the function's own (with the aliases notebook users reach for)."""
import difflib
import functools
import inspect
import re
from typing import Callable, Dict, Iterable, Optional, Tuple

# TransformerLens' name inside a block -> the engine's short hook name.
TL_HOOKS: Dict[str, str] = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "attn.hook_z": "z",
    "attn.hook_q": "q",
    "attn.hook_k": "k",
    "attn.hook_v": "v",
    "attn.hook_pattern": "pattern",
    "mlp.hook_post": "mlp_post",
    "mlp.hook_router": "router",  # mixture-of-experts models: the router logits
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "; did you mean ", quote: str = "'") -> str:
    """'; did you mean 'x'?' for the closest candidate, '' when none is close."""
    cands = [str(c) for c in candidates]
    if not isinstance(word, str) or not cands:
        return ""
    low = {c.lower(): c for c in cands}
    near = difflib.get_close_matches(word.lower(), list(low), n=1, cutoff=0.6)
    if not near:
        starts = [c for c in cands if c.lower().startswith(word.lower()) and word]
        if len(starts) == 1:
            near = [starts[0].lower()]
    return f"{prefix}{quote}{low[near[0]]}{quote}?" if near else ""


def parse_hook(name: str, known: Iterable[str]) -> Tuple[str, Optional[int]]:
    """(short hook name, layer or None) of a short or TransformerLens name; ValueError with the
    closest valid name otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"hooks: expected hook names (strings), got {type(name).__name__}")
    known = list(known)
    layer = None
    rest = name.strip()
    m = _BLOCK.match(rest)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
    elif rest.startswith("blocks."):
        rest = rest[len("blocks."):]
    if rest in known:
        return rest, layer
    if rest in TL_HOOKS:
        return TL_HOOKS[rest], layer
    valid = known + list(TL_HOOKS)
    raise ValueError(f"hooks: unknown hook '{name}'{did_you_mean(rest, valid)} (short names: {', '.join(known)}; "
                     f"TransformerLens names such as 'blocks.3.hook_resid_pre' or 'attn.hook_z' work too)")


def checked_kwargs(aliases: Optional[Dict[str, str]] = None) -> Callable:
    """A decorator: unknown keyword arguments raise TypeError naming the closest parameter;
    `aliases` maps other spellings to a parameter (method= -> methods=)."""
    aliases = aliases or {}

    def wrap(f: Callable) -> Callable:
        params = inspect.signature(f).parameters
        names = [n for n in params if n != "self"]

        @functools.wraps(f)
        def inner(*args, **kwargs):
            for k in list(kwargs):
                if k in params:
                    continue
                if k in aliases:
                    target = aliases[k]
                    if target in kwargs:
                        raise TypeError(f"{f.__name__}(): give {target}= or {k}=, not both")
                    kwargs[target] = kwargs.pop(k)
                    continue
                raise TypeError(f"{f.__name__}() got an unexpected keyword argument '{k}'"
                                f"{did_you_mean(k, names + list(aliases))}")
            return f(*args, **kwargs)

        return inner

    return wrap
