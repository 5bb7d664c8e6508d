"""The result of Model.patch: every (hook, method) matrix as numpy arrays and DataFrames, the
per-prompt values, confidence intervals, correlations and top components of results.json."""
import json
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


def _pandas():
    try:
        import pandas as pd  # type: ignore
    except ImportError as e:  # pragma: no cover - pandas is optional
        raise ImportError("frame() needs pandas (pip install pandas); matrix() gives the numpy array") from e
    return pd


class PatchResult:
    """What one Model.patch call computed. Matrices are normalized metrics (1 = clean, 0 =
    corrupted): rows are layers (or layer/head), columns positions (labelled 'index:token')."""

    def __init__(self, core_result: Any) -> None:
        self._r = core_result
        self._dict: Optional[Dict[str, Any]] = None
        self._index: Dict[Tuple[str, str], int] = {}
        for i in range(core_result.count):
            self._index[(core_result.hook(i), core_result.method(i))] = i

    # ---- what is there ----------------------------------------------------------------------
    def keys(self) -> List[Tuple[str, str]]:
        """(hook, method) of every matrix, in the order of results.json."""
        return list(self._index)

    @property
    def hooks(self) -> List[str]:
        return list(dict.fromkeys(h for h, _ in self._index))

    @property
    def methods(self) -> List[str]:
        return list(dict.fromkeys(m for _, m in self._index))

    def _i(self, hook: str, method: Optional[str]) -> int:
        if method is None:
            ms = [m for h, m in self._index if h == hook]
            if len(ms) != 1:
                raise ValueError(f"method: hook '{hook}' has {ms or 'no results'}; name one")
            method = ms[0]
        try:
            return self._index[(hook, method)]
        except KeyError:
            raise KeyError(f"no result for hook '{hook}', method '{method}'; have {self.keys()}") from None

    # ---- matrices ---------------------------------------------------------------------------
    def matrix(self, hook: str, method: Optional[str] = None) -> np.ndarray:
        """The [rows, cols] float64 matrix (a fresh copy; NaN where 'verified' did not patch)."""
        return self._r.values(self._i(hook, method))

    def rows(self, hook: str, method: Optional[str] = None) -> List[str]:
        return list(self._r.rows(self._i(hook, method)))

    def cols(self, hook: str, method: Optional[str] = None) -> List[str]:
        return list(self._r.cols(self._i(hook, method)))

    def frame(self, hook: str, method: Optional[str] = None):
        """The matrix as a pandas DataFrame indexed by its row and column labels."""
        pd = _pandas()
        i = self._i(hook, method)
        return pd.DataFrame(self._r.values(i), index=list(self._r.rows(i)), columns=list(self._r.cols(i)))

    def per_prompt(self, hook: str, method: str = "activation", raw: bool = False) -> np.ndarray:
        """Exact methods: [rows, cols, prompts] normalized metric per prompt (raw=True: the raw
        metric of each patched run, the logit difference by default; see `metric`)."""
        return self._r.per_prompt(self._i(hook, method), raw)

    def seconds(self, hook: str, method: Optional[str] = None) -> float:
        return self._r.seconds(self._i(hook, method))

    def _entry(self, hook: str, method: Optional[str]) -> Dict[str, Any]:
        return self.to_dict()["results"][self._i(hook, method)]

    def ci95(self, hook: str, method: str = "activation") -> np.ndarray:
        """Exact methods: the 95% confidence half-width of each cell's mean over prompts."""
        e = self._entry(hook, method)
        if "ci95_halfwidth" not in e:
            raise ValueError(f"{hook} {e['method']}: no per-prompt values (only exact methods have them)")
        return np.array(e["ci95_halfwidth"], dtype=np.float64)

    def std(self, hook: str, method: str = "activation") -> np.ndarray:
        e = self._entry(hook, method)
        if "per_prompt_std" not in e:
            raise ValueError(f"{hook} {e['method']}: no per-prompt values (only exact methods have them)")
        return np.array(e["per_prompt_std"], dtype=np.float64)

    def top(self, hook: str, method: Optional[str] = None, k: int = 10) -> List[Dict[str, Any]]:
        """The k components with the largest |value|: [{'row', 'col', 'value'}, ...]."""
        m = self.matrix(hook, method)
        rows, cols = self.rows(hook, method), self.cols(hook, method)
        flat = np.where(np.isnan(m), -np.inf, np.abs(m)).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        return [{"row": rows[i // m.shape[1]], "col": cols[i % m.shape[1]], "value": float(m.flat[i])}
                for i in order if np.isfinite(flat[i])]

    # ---- the run as a whole -----------------------------------------------------------------
    @property
    def correlations(self) -> List[Dict[str, Any]]:
        """Pearson / Spearman of attribution vs activation per hook (both methods run)."""
        return list(self.to_dict().get("attribution_vs_activation", []))

    @property
    def estimate_quality(self) -> List[Dict[str, Any]]:
        return list(self.to_dict().get("estimate_quality", []))

    @property
    def verified(self) -> List[Dict[str, Any]]:
        """verify_top: the nodes patched exactly, by rank ({'rank', 'hook', 'row', 'col', 'estimate',
        'attribution', 'atp_star', 'exact', 'ci95_halfwidth'})."""
        return list(self.to_dict().get("verify_top", {}).get("nodes", []))

    @property
    def prompts(self) -> List[Dict[str, Any]]:
        """Per prompt row: texts, answers and their ids, clean / corrupted logit differences."""
        return list(self.to_dict()["prompts"])

    @property
    def metric(self) -> Dict[str, Any]:
        """The metric: {'name': 'logit-diff' | 'prob-diff' | 'logprob' | 'kl', 'position': 'last',
        'definition', 'normalisation', 'per_prompt_key'}."""
        return dict(self.to_dict()["metric"])

    @property
    def clean_metric(self) -> float:
        """The clean run's raw metric (mean over prompts; the logit difference for logit-diff)."""
        d = self.to_dict()
        return float(d.get("clean_metric", d["clean_logit_diff"]))

    @property
    def corrupted_metric(self) -> float:
        d = self.to_dict()
        return float(d.get("corrupted_metric", d["corrupted_logit_diff"]))

    @property
    def clean_logit_diff(self) -> float:
        return float(self.to_dict()["clean_logit_diff"])

    @property
    def corrupted_logit_diff(self) -> float:
        return float(self.to_dict()["corrupted_logit_diff"])

    @property
    def position_labels(self) -> List[str]:
        return list(self.to_dict()["position_labels"])

    @property
    def summary(self) -> List[str]:
        """A sentence per hook saying where the largest effects lie."""
        return list(self.to_dict()["summary"])

    @property
    def engine_seconds(self) -> float:
        """Seconds the engine (C++) took for the whole call; the rest of a call's time is the binding's."""
        return float(self._r.wall_seconds)

    def to_dict(self) -> Dict[str, Any]:
        """results.json as a dict (parsed once)."""
        if self._dict is None:
            self._dict = json.loads(self._r.json())
        return self._dict

    def save(self, out_dir: str, force: bool = False) -> List[str]:
        """Writes exactly the command line's files (results.json, CSVs, SVGs, report.html) into
        out_dir; an existing results.json is kept unless force=True. Returns the paths."""
        from . import _core
        _core.prepare_out(str(out_dir), bool(force), False)
        return list(self._r.save(str(out_dir)))

    def __repr__(self) -> str:
        return f"<phi3patch.PatchResult {', '.join(f'{h}/{m}' for h, m in self.keys())}>"
