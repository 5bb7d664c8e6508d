"""What a model name means: a checkpoint directory, a Hugging Face hub id (`org/name`, optionally
`@revision`) found in the local Hugging Face cache (or downloaded with huggingface_hub where it is
installed and the network allows), a cache repo folder (`models--org--name`), or a
TransformerLens name (`"phi-3"`). The cache lookup follows the cache's own layout, as the command
line's `--model` does (runtime/hf_cache.cpp): `refs/<revision>` holds a commit hash, the files are
in `snapshots/<hash>`."""
import difflib
import os
import re
from typing import List, NamedTuple, Optional, Tuple

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
_HASH = re.compile(r"^[0-9a-f]{40}$")


class Resolved(NamedTuple):
    dir: str
    how: str  # one line: what the name resolved to ("" for a plain directory)


def cache_dirs() -> List[str]:
    """The Hugging Face hub caches looked in, in order: $HF_HUB_CACHE (or the older
    $HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return [os.environ[var]]
    if os.environ.get("HF_HOME"):
        return [os.path.join(os.environ["HF_HOME"], "hub")]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(xdg, "huggingface", "hub")]


def split_id(name: str) -> Tuple[str, Optional[str]]:
    """'org/name@rev' -> ('org/name', 'rev'); no '@': revision None."""
    if "@" in name:
        repo, rev = name.rsplit("@", 1)
        return repo, rev or None
    return name, None


def is_hub_id(name: str) -> bool:
    return bool(_ID.match(split_id(name)[0]))


def _repo_folder(cache: str, repo: str) -> Optional[str]:
    """models--org--name in `cache` (the hub's ids are case-insensitive: so is the lookup)."""
    want = "models--" + repo.replace("/", "--")
    exact = os.path.join(cache, want)
    if os.path.isdir(exact):
        return exact
    try:
        for entry in os.listdir(cache):
            if entry.lower() == want.lower() and os.path.isdir(os.path.join(cache, entry)):
                return os.path.join(cache, entry)
    except OSError:
        pass
    return None


def snapshot_of(repo_folder: str, revision: Optional[str]) -> Tuple[Optional[str], str]:
    """(snapshot directory or None, why not) of `revision` (default 'main') in a cache repo folder."""
    rev = revision or "main"
    snapshots = os.path.join(repo_folder, "snapshots")
    ref = os.path.join(repo_folder, "refs", rev)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    elif _HASH.match(rev):
        commit = rev
    else:
        refs = sorted(os.listdir(os.path.join(repo_folder, "refs"))) if os.path.isdir(
            os.path.join(repo_folder, "refs")) else []
        return None, f"no revision '{rev}' (refs: {', '.join(refs) or 'none'})"
    snap = os.path.join(snapshots, commit)
    if not os.path.isdir(snap):
        return None, f"revision '{rev}' is commit {commit[:12]}, whose snapshot is not in {snapshots}"
    if not os.path.isfile(os.path.join(snap, "config.json")):
        return None, f"the snapshot {snap} has no config.json (an incomplete download?)"
    return snap, ""


def _download(repo: str, revision: Optional[str]) -> Tuple[Optional[str], str]:
    try:
        from huggingface_hub import snapshot_download  # type: ignore
    except ImportError:
        return None, "huggingface_hub is not installed (pip install huggingface_hub), so nothing was downloaded"
    try:
        path = snapshot_download(repo, revision=revision, allow_patterns=ENGINE_FILES)
    except Exception as e:  # noqa: BLE001 - offline, gated, unknown repo: all say why
        return None, f"downloading it failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return path, ""


def _fetch_command(repo: str, revision: Optional[str]) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo}{rev}  (or: huggingface-cli download {repo}{rev})"


def resolve(name, download: bool = True) -> Resolved:
    """The checkpoint directory `name` stands for; phi3patch.Error naming what was tried."""
    from ._paths import data_path

    if name is None:
        return Resolved(data_path("models", "tiny-temporal-phi3"), "")
    path = os.path.expanduser(os.fspath(name))
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "snapshots")) and not os.path.isfile(os.path.join(path, "config.json")):
            snap, why = snapshot_of(path, None)
            if snap is None:
                raise _core.Error(f"model '{path}': a Hugging Face cache repo folder, but {why}")
            return Resolved(snap, f"{path} (cache repo folder) -> {snap}")
        return Resolved(path, "")
    if path.lower() in EMBEDDED_NAMES:
        return Resolved(data_path("models", "tiny-temporal-phi3"), f"'{name}' -> the embedded model")
    alias = TL_ALIASES.get(path.lower())
    target = alias or path
    repo, revision = split_id(target)
    if not is_hub_id(target):
        near = difflib.get_close_matches(path.lower(), list(TL_ALIASES) + list(EMBEDDED_NAMES), n=1, cutoff=0.75)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise _core.Error(f"model '{name}': no such directory, and not a Hugging Face hub id (org/name[@revision]) "
                          f"or a TransformerLens name ({', '.join(sorted(TL_ALIASES))}){hint}")
    what = f"'{name}' (TransformerLens name) -> {repo}" if alias else repo
    looked = []
    for cache in cache_dirs():
        folder = _repo_folder(cache, repo)
        if folder is None:
            looked.append(f"{cache} (no models--{repo.replace('/', '--')})")
            continue
        snap, why = snapshot_of(folder, revision)
        if snap is not None:
            return Resolved(snap, f"{what}{'@' + revision if revision else ''} -> {snap}")
        looked.append(f"{folder}: {why}")
    reason = "not downloaded (download=False)"
    if download:
        snap, reason = _download(repo, revision)
        if snap is not None:
            return Resolved(snap, f"{what}{'@' + revision if revision else ''} -> {snap} (downloaded)")
    raise _core.Error(f"model {what}{'@' + revision if revision else ''}: not in the Hugging Face cache (looked in "
                      f"{'; '.join(looked)}); {reason}. Fetch it with: {_fetch_command(repo, revision)}")
