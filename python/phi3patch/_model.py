"""A loaded model: load once, then patch, trace circuits and read activations as often as
needed (the engine keeps the weights on its device between calls)."""
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._circuit import CircuitResult
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
            raise ValueError(f"methods: expected attribution, atp-star, activation, both or all, got '{s}'")
    return "attribution" in out, "activation" in out, "atp-star" in out


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
    def patch(self, pairs: Any = None, *, hooks: Union[str, Sequence[str]] = ("resid_pre", "attn_out", "mlp_out"),
              methods: Union[str, Sequence[str]] = ("attribution", "activation"), direction: str = "denoise",
              metric: str = "logit-diff", batch: int = 0, mem_budget: float = 0, verify_top: int = 0, naive: bool = False,
              positions: Union[None, str, Sequence[int]] = None, recompute: str = "auto",
              bos: Optional[bool] = None, answer_first_token: bool = False, out: Optional[str] = None,
              force: bool = False, resume: bool = False, check_finite: bool = True,
              progress: ProgressArg = True) -> PatchResult:
        """Attribution (AtP, AtP*) and exact activation patching of `hooks` on clean/corrupted pairs.

        pairs: a pairs file (JSON, as `phi3patch run --pairs`), a list of
            {"clean": {"question", "answer"}, "corrupted": {...}} dicts, or the seed's four lists as a
            tuple (clean_prompts, clean_answers, corrupted_prompts, corrupted_answers); None: the
            seed's pairs. Each pair is mixed both ways, as the seed does.
        hooks: resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v, pattern (+ _all_pos),
            mlp_post. methods: attribution, atp-star, activation (or both / all).
        direction: denoise (clean values into the corrupted run) or noise.
        metric: at the last position, normalised (M - M_corrupted) / (M_clean - M_corrupted):
            logit-diff (logit[answer] - logit[other]), prob-diff (p[answer] - p[other]), logprob
            (log p[answer]) or kl (KL(p_clean || p_run) over the vocabulary; 0 on the clean run). batch: pairs per batch
            (0: all). mem_budget: MiB per sweep chunk (0: automatic), and for estimates alone the
            memory a batch may use. verify_top: patch the K nodes with the largest estimate exactly.
            naive: one forward per patch (the baseline).
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
        o.hooks = _str_list("hooks", hooks)
        o.attribution, o.activation, o.atp_star = _methods(methods)
        if direction not in ("denoise", "noise"):
            raise ValueError(f"direction: expected 'denoise' or 'noise', got {direction!r}")
        o.noising = direction == "noise"
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        o.metric = metric
        o.batch = _int("batch", batch)
        if isinstance(mem_budget, bool) or not isinstance(mem_budget, (int, float)) or mem_budget < 0:
            raise TypeError(f"mem_budget: expected a number of MiB >= 0, got {mem_budget!r}")
        o.mem_budget_mb = float(mem_budget)
        o.verify_top = _int("verify_top", verify_top)
        if positions is not None:
            if isinstance(positions, str):
                o.positions = positions
            elif isinstance(positions, (list, tuple, range)) and all(
                    isinstance(p, int) and not isinstance(p, bool) for p in positions):
                o.positions = ",".join(str(p) for p in positions)
            else:
                raise TypeError(f"positions: expected a string like '1500:1600' or a list of ints, got {positions!r}")
        if recompute not in ("auto", "on", "off"):
            raise ValueError(f"recompute: expected 'auto', 'on' or 'off', got {recompute!r}")
        o.recompute = recompute
        o.naive = bool(naive)
        o.add_bos = _bos(bos)
        o.answer_first_token = bool(answer_first_token)
        o.check_finite = bool(check_finite)
        known = set(_core.hook_names())
        for h in o.hooks:
            if h not in known:
                raise ValueError(f"hooks: unknown hook '{h}'; expected one of {', '.join(sorted(known))}")
        if resume and out is None:
            raise ValueError("resume=True needs out= (the directory whose checkpoints to resume)")
        if out is not None:
            out = os.fspath(out)
            _core.prepare_out(out, bool(force), bool(resume))
        cb = make_progress(progress)
        try:
            r = _core.patch(self._e, text, name, o, cb, out or "", bool(resume))
        finally:
            if hasattr(cb, "close"):
                cb.close()
        result = PatchResult(r)
        if out is not None:
            r.save(out)
        return result

    def circuit(self, pairs: Any = None, *, method: str = "eap-ig", ig_steps: int = 5, direction: str = "denoise",
                edges: Optional[int] = None, edge_grid: Optional[Iterable[int]] = None, target: float = 0.8,
                select: str = "top-k", mem_budget: float = 0, batch: int = 0, bos: Optional[bool] = None,
                answer_first_token: bool = False, out: Optional[str] = None, force: bool = False,
                progress: ProgressArg = True) -> CircuitResult:
        """Edge attribution (EAP or EAP-IG) of every edge of the circuit graph, circuits of the top-k
        edges evaluated exactly over a grid of k, and the faithfulness curve (`phi3patch circuit`)."""
        text, name = pairs_text(seed_pairs_file() if pairs is None else pairs)
        o = _core.CircuitOptions()
        if method not in ("eap", "eap-ig"):
            raise ValueError(f"method: expected 'eap' or 'eap-ig', got {method!r}")
        o.ig = method == "eap-ig"
        o.ig_steps = _int("ig_steps", ig_steps, 1)
        if direction not in ("denoise", "noise"):
            raise ValueError(f"direction: expected 'denoise' or 'noise', got {direction!r}")
        o.noising = direction == "noise"
        if edges is not None:
            o.edges = _int("edges", edges)
        if edge_grid is not None:
            o.grid = [_int("edge_grid[]", k) for k in edge_grid]
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise TypeError(f"target: expected a number, got {type(target).__name__}")
        o.target = float(target)
        if select not in ("top-k", "greedy"):
            raise ValueError(f"select: expected 'top-k' or 'greedy', got {select!r}")
        o.greedy = select == "greedy"
        o.mem_budget_mb = float(mem_budget)
        o.batch = _int("batch", batch)
        o.add_bos = _bos(bos)
        o.answer_first_token = bool(answer_first_token)
        if out is not None:
            out = os.fspath(out)
            _core.prepare_circuit_out(out, bool(force))
        cb = make_progress(progress)
        try:
            r = _core.circuit(self._e, text, name, o, cb)
        finally:
            if hasattr(cb, "close"):
                cb.close()
        result = CircuitResult(r)
        if out is not None:
            r.save(out)
        return result

    # ---- activations and the metric ---------------------------------------------------------
    def run_with_cache(self, prompts: Union[str, Sequence[str]], names: Union[str, Sequence[str]] = (),
                       bos: Optional[bool] = None) -> Tuple[Any, Dict[str, Any]]:
        """One forward pass of `prompts` (left-padded to one length, positions starting at each row's
        first token): (logits [B, T, vocab], {name: activation}) for TransformerLens hook names such as
        'blocks.3.hook_resid_pre', 'blocks.0.attn.hook_z' [B, T, H, d_head], 'blocks.1.attn.hook_pattern'
        [B, H, T, T], 'blocks.2.mlp.hook_post' [B, T, d_mlp]. On the CPU the arrays are read-only numpy
        views of the engine's buffers; on CUDA torch tensors on the GPU through DLPack (no copy; numpy's
        from_dlpack cannot read device memory). Either keeps the pass alive as long as it is used."""
        prompts = _str_list("prompts", prompts)
        names = _str_list("names", names)
        d = _core.run_with_cache(self._e, prompts, names, _bos(bos))
        conv = self._from_device if self._e.on_cuda else (lambda a: a)
        cache = {n: conv(d[n]) for n in names}
        cache["pad"] = d["pad"]
        cache["tokens"] = d["tokens"]
        return conv(d["logits"]), cache

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


def load(model_dir: Optional[Union[str, "os.PathLike[str]"]] = None, device: str = "auto", dtype: str = "bf16") -> Model:
    """Loads a checkpoint directory (config.json, safetensors, tokenizer) once.

    model_dir: None for the embedded model. device: 'auto' (CUDA when a GPU is visible), 'cpu', 'cuda'.
    dtype: the weights on CUDA, 'bf16' (default) or 'fp32'; the CPU always computes in fp32.
    """
    if model_dir is None:
        model_dir = embedded_model_dir()
    if not isinstance(model_dir, (str, os.PathLike)):
        raise TypeError(f"model_dir: expected a directory path, got {type(model_dir).__name__}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype: expected 'bf16' or 'fp32', got {dtype!r}")
    return Model(_core.load(os.fspath(model_dir), device, dtype == "fp32"))
