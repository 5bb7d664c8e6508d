"""What a model name means: a checkpoint directory, a Hugging Face hub id (`org/name`, optionally
`@revision`) from the local Hugging Face cache — resolved by the engine's own resolver, the one
the command line's `--model` uses (runtime/hf_cache.cpp) — or, where the cache lacks it and
huggingface_hub is installed and the network allows, downloaded with snapshot_download; a cache
repo folder (`models--org--name`); a TransformerLens name (`"phi-3"`); None or "embedded" for the
small model embedded in the package."""
import difflib
import os
import re
from typing import NamedTuple, Optional, Tuple

from . import _core

# TransformerLens' names (transformer_lens.loading_from_pretrained: MODEL_ALIASES, lower-cased)
# of the checkpoints of the families the engine runs.
TL_ALIASES = {
    "phi-3": "microsoft/Phi-3-mini-4k-instruct",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.1",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-27b": "google/gemma-2-27b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-2-27b-it": "google/gemma-2-27b-it",
}
EMBEDDED_NAMES = ("embedded", "tiny-temporal-phi3")

# The files the engine reads (snapshot_download's allow_patterns): config, weights, tokenizer.
ENGINE_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "generation_config.json"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class Resolved(NamedTuple):
    dir: str
    how: str  # one line: what the name resolved to ("" for a plain directory)


def split_id(name: str) -> Tuple[str, Optional[str]]:
    """'org/name@rev' -> ('org/name', 'rev'); no '@': revision None."""
    if "@" in name:
        repo, rev = name.rsplit("@", 1)
        return repo, rev or None
    return name, None


def is_hub_id(name: str) -> bool:
    return bool(_ID.match(split_id(name)[0]))


def _download(repo: str, revision: Optional[str]) -> Tuple[Optional[str], str]:
    try:
        from huggingface_hub import snapshot_download  # type: ignore
    except ImportError:
        return None, "huggingface_hub is not installed (pip install huggingface_hub), so nothing was downloaded"
    try:
        path = snapshot_download(repo, revision=revision, allow_patterns=ENGINE_FILES)
    except Exception as e:  # noqa: BLE001 - offline, gated, unknown repo: all say why
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"downloading it failed ({type(e).__name__}: {first})"
    return path, ""


def resolve(name, download: bool = True) -> Resolved:
    """The checkpoint directory `name` stands for; phi3patch.Error naming what was tried."""
    from ._paths import data_path

    if name is None:
        return Resolved(data_path("models", "tiny-temporal-phi3"), "")
    given = os.fspath(name)
    path = os.path.expanduser(given)
    if path.lower() in EMBEDDED_NAMES and not os.path.isdir(path):
        return Resolved(data_path("models", "tiny-temporal-phi3"), f"'{given}' -> the embedded model")
    alias = None if os.path.isdir(path) else TL_ALIASES.get(path.lower())
    target = alias or path
    what = f"'{given}' (TransformerLens name) -> {target}" if alias else target
    prefix = f"{what}: " if alias else ""
    try:
        found = _core.resolve_model_dir(target)  # a directory, a cache repo folder or a cached hub id
    except _core.Error as e:
        why = ""
        if download and is_hub_id(target):
            snap, why = _download(*split_id(target))
            if snap is not None:
                return Resolved(snap, f"{what} -> {snap} (downloaded)")
        raise type(e)(f"{prefix}{e}{'; ' + why if why else ''}") from None
    if os.path.isdir(found):  # the loader names what a directory lacks
        return Resolved(found, "" if found == path else f"{what} -> {found}")
    near = difflib.get_close_matches(path.lower(), list(TL_ALIASES) + list(EMBEDDED_NAMES), n=1, cutoff=0.75)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise _core.Error(f"model '{given}': no such directory, and not a Hugging Face hub id (org/name[@revision]) "
                      f"or a TransformerLens name ({', '.join(sorted(TL_ALIASES))}){hint}")
