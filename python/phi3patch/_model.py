"""A loaded model: load once, then patch, trace circuits and read activations as often as
needed (the engine keeps the weights on its device between calls)."""
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._cache import ActivationCache
from ._circuit import CircuitResult
from ._hub import resolve as resolve_model
from ._names import checked_kwargs, did_you_mean, parse_hook
from ._errors import python_words
from ._pairs import pairs_text
from ._paths import data_path
from ._progress import ProgressArg, make_progress
from ._result import PatchResult

_METHODS = ("attribution", "atp-star", "activation")
METRICS = ("logit-diff", "prob-diff", "logprob", "kl")  # patch(metric=...), `phi3patch run --metric`


def embedded_model_dir() -> str:
    """The small Phi-3 model embedded in the project (data/models/tiny-temporal-phi3)."""
    return data_path("models", "tiny-temporal-phi3")


def seed_pairs_file() -> str:
    """The seed experiment's clean/corrupted pairs (data/temporal_scope_for_attribution_patching.json)."""
    return data_path("temporal_scope_for_attribution_patching.json")


def _bos(bos: Optional[bool]) -> int:
    if bos is None:
        return -1
    if not isinstance(bos, bool):
        raise TypeError(f"bos: expected True, False or None (the tokenizer's default), got {type(bos).__name__}")
    return int(bos)


def _str_list(name: str, x: Any) -> List[str]:
    if isinstance(x, str):
        return [x]
    if not isinstance(x, (list, tuple)) or not all(isinstance(s, str) for s in x):
        raise TypeError(f"{name}: expected a string or a list of strings, got {type(x).__name__}")
    return list(x)


def _methods(methods: Any) -> Tuple[bool, bool, bool]:
    items = _str_list("methods", methods)
    flat: List[str] = []
    for item in items:
        flat += [s.strip() for s in item.split(",") if s.strip()]
    if not flat:
        raise ValueError("methods: no method given")
    out = set()
    for s in flat:
        if s == "both":
            out |= {"attribution", "activation"}
        elif s == "all":
            out |= set(_METHODS)
        elif s in _METHODS:
            out.add(s)
        else:
            raise ValueError(f"methods: expected attribution, atp-star, activation, both or all, got '{s}'"
                             f"{did_you_mean(s, _METHODS + ('both', 'all'))}")
    return "attribution" in out, "activation" in out, "atp-star" in out


def _hooks(hooks: Any) -> Tuple[List[str], List[int]]:
    """Short hook names (deduplicated, in order) and the layers named by TransformerLens names
    ('blocks.3.hook_resid_pre' names layer 3)."""
    known = list(_core.hook_names())
    out: List[str] = []
    layers: List[int] = []
    for item in _str_list("hooks", hooks):
        for name in [x.strip() for x in item.split(",") if x.strip()]:
            short, layer = parse_hook(name, known)
            if short not in out:
                out.append(short)
            if layer is not None and layer not in layers:
                layers.append(layer)
    if not out:
        raise ValueError("hooks: no hook given")
    return out, layers


def _int_list(name: str, v: Any) -> str:
    """A position or layer list as the command line takes it: "1500:1600,-1" or a list of ints."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (list, tuple, range)) and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in v):
        return ",".join(str(int(p)) for p in v)
    raise TypeError(f"{name}: expected a string like '1:3,-1' (half-open ranges, negatives from the end) or a list "
                    f"of ints, got {v!r}")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected {', '.join(repr(a) for a in allowed)}, got {value!r}"
                         f"{did_you_mean(value, allowed) if isinstance(value, str) else ''}")
    return value


def _int(name: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v}")
    return int(v)


class Model:
    """A checkpoint loaded on a device. Create it with :func:`phi3patch.load`."""

    def __init__(self, engine: "_core.Engine") -> None:
        self._e = engine
        with open(os.path.join(engine.dir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        cfg.update({"architecture": engine.architecture, "family": engine.family, "head_dim": engine.d_head,
                    "pad_token_id": engine.pad_token_id})
        self._config = cfg

    # ---- what it is -----------------------------------------------------------------------
    @property
    def config(self) -> Dict[str, Any]:
        """config.json as loaded, with the engine's architecture, family, head_dim and pad id."""
        return dict(self._config)

    @property
    def dir(self) -> str:
        return self._e.dir

    @property
    def source(self) -> str:
        """What the name given to load() resolved to (a hub id's cache snapshot, ...), or the directory."""
        return getattr(self, "_source", self._e.dir)

    @property
    def device(self) -> str:
        """The backend, e.g. 'cpu (openblas, 2 threads)' or the GPU's name."""
        return self._e.device

    @property
    def n_layers(self) -> int:
        return self._e.n_layers

    @property
    def n_heads(self) -> int:
        return self._e.n_heads

    def __repr__(self) -> str:
        return (f"<phi3patch.Model {self._e.architecture} {self._e.n_layers} layers, d={self._e.d_model} "
                f"from {self._e.dir!r} on {self._e.device}>")

    def tokenize(self, text: str, bos: Optional[bool] = None) -> Dict[str, Any]:
        """Token ids, pieces and the decoded text of `text` (BOS as the tokenizer does by default)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a string, got {type(text).__name__}")
        ids, pieces, decoded = self._e.tokenize(text, _bos(bos))
        return {"ids": list(ids), "pieces": list(pieces), "text": decoded}

    # ---- patching ---------------------------------------------------------------------------
    @checked_kwargs({"method": "methods", "hook": "hooks"})
    def patch(self, pairs: Any = None, *, hooks: Union[str, Sequence[str]] = ("resid_pre", "attn_out", "mlp_out"),
              methods: Union[None, str, Sequence[str]] = None, direction: str = "denoise",
              metric: str = "logit-diff", batch: int = 0, mem_budget: float = 0, verify_top: int = 0, naive: bool = False,
              positions: Union[None, str, Sequence[int]] = None, layers: Union[None, str, Sequence[int]] = None,
              mix: bool = True, recompute: str = "auto",
              bos: Optional[bool] = None, answer_first_token: bool = False, out: Optional[str] = None,
              force: bool = False, resume: bool = False, check_finite: bool = True,
              progress: ProgressArg = True) -> PatchResult:
        """Attribution (AtP, AtP*) and exact activation patching of `hooks` on clean/corrupted pairs.

        pairs: a pairs file (JSON, as `phi3patch run --pairs`), a list of
            {"clean": {"question", "answer"}, "corrupted": {...}} dicts, or the seed's four lists as a
            tuple (clean_prompts, clean_answers, corrupted_prompts, corrupted_answers); None: the
            seed's pairs. Each pair is mixed both ways, as the seed does (mix=False: as given).
        hooks: resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v, pattern (+ _all_pos),
            mlp_post, or TransformerLens' names (hook_resid_pre, attn.hook_z, blocks.3.hook_mlp_out, ...).
            methods (or method): attribution, atp-star, activation (or both / all), a list or one string;
            default attribution and activation, or with verify_top alone AtP* to rank (AtP where AtP*
            cannot run) and the exact check of the top nodes, without a full sweep.
        direction: denoise (clean values into the corrupted run) or noise.
        metric: at the last position, normalised (M - M_corrupted) / (M_clean - M_corrupted):
            logit-diff (logit[answer] - logit[other]), prob-diff (p[answer] - p[other]), logprob
            (log p[answer]) or kl (KL(p_clean || p_run) over the vocabulary; 0 on the clean run). batch: pairs per batch
            (0: all). mem_budget: MiB per sweep chunk (0: automatic), and for estimates alone the
            memory a batch may use. verify_top: patch the K nodes with the largest estimate exactly.
            naive: one forward per patch (the baseline).
        layers: only these layers (a list of ints or "0,2:4,-1"; NaN elsewhere); a TransformerLens hook
            name with a layer ('blocks.3.hook_resid_pre') selects that layer too.
        mix: False uses each pair as given; True (default) adds each pair swapped, as the seed does.
        positions: the exact sweep only at these positions: "1500:1600,-1" (half-open ranges, negatives
            from the end) or a list of ints; other cells are NaN (long prompts). recompute: "auto",
            "on" or "off": estimates alone keep only each layer's input and recompute the rest in the
            backward where the full pass would not fit (planned before any work).
        bos: prepend BOS (None: the tokenizer's default). out: also write the command line's files
            there (checkpoints of finished batches too; resume=True keeps those of an interrupted call;
            an existing results.json is kept unless force=True).
        progress: True (tqdm bars when installed, else lines on stderr), False, or a callable(line).
        """
        text, name = pairs_text(seed_pairs_file() if pairs is None else pairs)
        o = _core.PatchOptions()
        o.hooks, hook_layers = _hooks(hooks)
        if methods is None and verify_top:  # the engine picks AtP* (or AtP) to rank, and no full sweep
            o.attribution, o.activation, o.atp_star, o.auto_methods = True, False, True, True
        else:
            o.attribution, o.activation, o.atp_star = _methods(("attribution", "activation") if methods is None else methods)
        o.noising = _choice("direction", direction, ("denoise", "noise")) == "noise"
        o.metric = _choice("metric", metric, METRICS)
        o.batch = _int("batch", batch)
        if isinstance(mem_budget, bool) or not isinstance(mem_budget, (int, float)) or mem_budget < 0:
            raise TypeError(f"mem_budget: expected a number of MiB >= 0, got {mem_budget!r}")
        o.mem_budget_mb = float(mem_budget)
        o.verify_top = _int("verify_top", verify_top)
        if positions is not None:
            o.positions = _int_list("positions", positions)
        o.recompute = _choice("recompute", recompute, ("auto", "on", "off"))
        if layers is not None and hook_layers:
            raise ValueError("layers: give the layers either in layers= or in the hook names ('blocks.3.hook_resid_pre'), not both")
        if hook_layers:
            layers = hook_layers
        if layers is not None:
            o.layers = _int_list("layers", layers)
        o.mix = bool(mix)
        o.naive = bool(naive)
        o.add_bos = _bos(bos)
        o.answer_first_token = bool(answer_first_token)
        o.check_finite = bool(check_finite)
        if resume and out is None:
            raise ValueError("resume=True needs out= (the directory whose checkpoints to resume)")
        if out is not None:
            out = os.fspath(out)
            _core.prepare_out(out, bool(force), bool(resume))
        cb = make_progress(progress)
        try:
            with python_words():
                r = _core.patch(self._e, text, name, o, cb, out or "", bool(resume))
        finally:
            if hasattr(cb, "close"):
                cb.close()
        result = PatchResult(r)
        if out is not None:
            r.save(out)
        return result

    @checked_kwargs({"methods": "method"})
    def circuit(self, pairs: Any = None, *, method: str = "eap-ig", ig_steps: int = 5, direction: str = "denoise",
                edges: Optional[int] = None, edge_grid: Optional[Iterable[int]] = None, target: float = 0.8,
                select: str = "top-k", mem_budget: float = 0, batch: int = 0, mix: bool = True,
                bos: Optional[bool] = None,
                answer_first_token: bool = False, out: Optional[str] = None, force: bool = False,
                progress: ProgressArg = True) -> CircuitResult:
        """Edge attribution (EAP or EAP-IG) of every edge of the circuit graph, circuits of the top-k
        edges evaluated exactly over a grid of k, and the faithfulness curve (`phi3patch circuit`)."""
        text, name = pairs_text(seed_pairs_file() if pairs is None else pairs)
        o = _core.CircuitOptions()
        o.ig = _choice("method", method, ("eap", "eap-ig")) == "eap-ig"
        o.ig_steps = _int("ig_steps", ig_steps, 1)
        o.noising = _choice("direction", direction, ("denoise", "noise")) == "noise"
        if edges is not None:
            o.edges = _int("edges", edges)
        if edge_grid is not None:
            o.grid = [_int("edge_grid[]", k) for k in edge_grid]
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise TypeError(f"target: expected a number, got {type(target).__name__}")
        o.target = float(target)
        o.greedy = _choice("select", select, ("top-k", "greedy")) == "greedy"
        o.mem_budget_mb = float(mem_budget)
        o.batch = _int("batch", batch)
        o.mix = bool(mix)
        o.add_bos = _bos(bos)
        o.answer_first_token = bool(answer_first_token)
        if out is not None:
            out = os.fspath(out)
            _core.prepare_circuit_out(out, bool(force))
        cb = make_progress(progress)
        try:
            with python_words():
                r = _core.circuit(self._e, text, name, o, cb)
        finally:
            if hasattr(cb, "close"):
                cb.close()
        result = CircuitResult(r)
        if out is not None:
            r.save(out)
        return result

    # ---- activations and the metric ---------------------------------------------------------
    @checked_kwargs({"names": "names_filter"})
    def run_with_cache(self, prompts: Union[str, Sequence[str]],
                       names_filter: Union[None, str, Sequence[str], Callable[[str], bool]] = None,
                       bos: Optional[bool] = None) -> Tuple[Any, ActivationCache]:
        """One forward pass of `prompts` (left-padded to one length, positions starting at each row's
        first token), as TransformerLens' run_with_cache: (logits [B, T, vocab], cache).

        names_filter: None caches every hook (as TransformerLens does), or a name, a list of names or
            a predicate on names; a block hook without a layer ("resid_pre", "attn.hook_z") means every layer's.
            Names are TransformerLens': 'hook_embed', 'blocks.3.hook_resid_pre'
            (_mid, _post), 'blocks.3.hook_attn_out', 'blocks.3.hook_mlp_out', 'blocks.0.attn.hook_q'
            [B, T, H, d_head] (k, v [B, T, KVH, d_head]; rot_q, rot_k after rotary),
            'blocks.0.attn.hook_z', 'blocks.1.attn.hook_attn_scores' and 'blocks.1.attn.hook_pattern'
            [B, H, T, T], 'blocks.2.mlp.hook_post' [B, T, d_mlp], 'ln_final.hook_normalized'.
        The cache is a dict (cache['resid_pre', 3] works too) with cache.tokens [B, T], cache.pad [B]
        (left-pad count) and cache.str_tokens beside it. On the CPU the engine's activations are
        read-only numpy views of its buffers; on CUDA torch tensors on the GPU through DLPack (no copy).
        Either keeps the pass alive as long as it is used. hook_embed is the embedding as the residual
        stream receives it (blocks.0.hook_resid_pre); ln_final.hook_normalized (x / rms(x), before the
        weight) and the attention scores are computed from the cached values."""
        from . import _cache
        prompts = _str_list("prompts", prompts)
        wanted = _cache.select(names_filter, self.n_layers)
        need = {s for n in wanted for s in _cache.sources(n, self.n_layers)}
        with python_words():
            d = _core.run_with_cache(self._e, prompts, sorted(need), _bos(bos))
        conv = self._from_device if self._e.on_cuda else (lambda a: a)
        raw = {n: conv(d[n]) for n in need}
        pad = d["pad"]
        acts = {n: _cache.derive(n, [raw[s] for s in _cache.sources(n, self.n_layers)], pad, self._e) for n in wanted}
        tokens = d["tokens"]
        str_tokens = [[self._e.label(int(t)) for t in row] for row in tokens]
        return conv(d["logits"]), _cache.ActivationCache(acts, tokens, pad, str_tokens)

    def to_str_tokens(self, text: str, bos: Optional[bool] = None) -> List[str]:
        """The tokens of `text` as strings (TransformerLens' to_str_tokens; BOS as the tokenizer adds it)."""
        return self.tokenize(text, bos)["pieces"]

    @property
    def cfg(self) -> Any:
        """TransformerLens-style config: n_layers, d_model, n_heads, n_key_value_heads, d_head, d_mlp,
        d_vocab, n_ctx, architecture (attributes); config has config.json itself."""
        from types import SimpleNamespace
        e = self._e
        return SimpleNamespace(n_layers=e.n_layers, d_model=e.d_model, n_heads=e.n_heads, n_key_value_heads=e.n_kv_heads,
                               d_head=e.d_head, d_mlp=e.d_mlp, d_vocab=e.vocab_size, n_ctx=e.n_ctx,
                               architecture=e.architecture, family=e.family, device=e.device)

    @staticmethod
    def _from_device(a: Any) -> Any:
        try:
            import torch  # type: ignore
        except ImportError:
            return a  # a DLPack-capable array (cupy.from_dlpack, jax.dlpack work too)
        return torch.from_dlpack(a)

    def logit_diff(self, prompts: Union[str, Sequence[str]], answers: Union[str, Sequence[str]],
                   others: Union[str, Sequence[str]], bos: Optional[bool] = None) -> np.ndarray:
        """logit[answer] - logit[other] at each prompt's last token (answers are words, tokenized as
        the pairs' answers are), one float per prompt."""
        return _core.logit_diff(self._e, _str_list("prompts", prompts), _str_list("answers", answers),
                                _str_list("others", others), _bos(bos))


def load(model_dir: Optional[Union[str, "os.PathLike[str]"]] = None, device: str = "auto", dtype: str = "bf16",
         *, download: bool = True, verbose: bool = True) -> Model:
    """Loads a checkpoint once.

    model_dir: a checkpoint directory (config.json, safetensors, tokenizer); a Hugging Face hub id
        'org/name' or 'org/name@revision', read from the local Hugging Face cache ($HF_HUB_CACHE,
        $HF_HOME/hub or ~/.cache/huggingface/hub) or, where huggingface_hub is installed and
        download=True, downloaded (only the files the engine reads); a cache repo folder
        (.../models--org--name); a TransformerLens name such as 'phi-3'; None or 'embedded' for
        the small model embedded in the project. What a name resolved to is printed (verbose=True)
        and kept in Model.source.
    device: 'auto' (CUDA when a GPU is visible), 'cpu', 'cuda'.
    dtype: the weights on CUDA, 'bf16' (default) or 'fp32'; the CPU always computes in fp32.
    """
    if model_dir is not None and not isinstance(model_dir, (str, os.PathLike)):
        raise TypeError(f"model_dir: expected a directory path or a hub id, got {type(model_dir).__name__}")
    _choice("device", device, ("auto", "cpu", "cuda"))
    _choice("dtype", dtype, ("bf16", "fp32"))
    where = resolve_model(model_dir, download=download)
    if where.how and verbose:
        print(f"phi3patch: model {where.how}")
    model = Model(_core.load(where.dir, device, dtype == "fp32"))
    model._source = where.how or where.dir
    return model
