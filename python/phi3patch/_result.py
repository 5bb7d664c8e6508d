"""The result of Model.patch: every (hook, method) matrix as numpy arrays and DataFrames, the
per-prompt values, confidence intervals, correlations and top components of results.json."""
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._names import did_you_mean


def _pandas():
    try:
        import pandas as pd  # type: ignore
    except ImportError as e:  # pragma: no cover - pandas is optional
        raise ImportError("frame() needs pandas (pip install pandas); matrix() gives the numpy array") from e
    return pd


def hook_positions(cols: List[str]) -> bool:
    """Whether column labels are positions ('index:token'), not heads."""
    return bool(cols) and all(":" in c for c in cols)


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

    def _i(self, hook: str, method: Optional[str], any_method: bool = False) -> int:
        """The index of (hook, method); method None: the hook's only method (any_method: its first,
        for what every method of a hook shares, the row and column labels)."""
        if method is None:
            ms = [m for h, m in self._index if h == hook]
            if hook not in self.hooks:
                raise KeyError(f"no result for hook '{hook}'; have {self.hooks}{did_you_mean(hook, self.hooks)}")
            if any_method:
                ms = ms[:1]
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
        """Row labels ('L3', 'L3H1'): the same for every method of a hook."""
        return list(self._r.rows(self._i(hook, method, any_method=True)))

    def cols(self, hook: str, method: Optional[str] = None) -> List[str]:
        """Column labels (positions 'index:token', or heads): the same for every method of a hook."""
        return list(self._r.cols(self._i(hook, method, any_method=True)))

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

    def top(self, hook: Optional[str] = None, method: Optional[str] = None, k: int = 10):
        """The k components with the largest |value| as a DataFrame (hook, method, row, col, value),
        largest first: of one hook, or with hook=None of every hook (of `method`; default: the exact
        method where it ran, else the only one)."""
        pd = _pandas()
        hooks = [hook] if hook is not None else self.hooks
        if method is None and hook is None:
            method = "activation" if "activation" in self.methods else None
            if method is None and len(self.methods) > 1:
                raise ValueError(f"method: the run has {self.methods}; name one")
        rows = []
        for h in hooks:
            if hook is None and method is not None and (h, method) not in self._index:
                continue
            m = self.matrix(h, method)
            mname = self.keys()[self._i(h, method)][1]
            rl, cl = self.rows(h), self.cols(h)
            flat = np.where(np.isfinite(m), np.abs(m), -np.inf).ravel()
            for i in np.argsort(-flat, kind="stable")[:k]:  # each hook's k largest are enough
                if np.isfinite(flat[i]):
                    rows.append((h, mname, rl[i // m.shape[1]], cl[i % m.shape[1]], float(m.flat[i])))
        rows.sort(key=lambda r: -abs(r[4]))  # stable: ties keep the hook and matrix order
        return pd.DataFrame(rows[:k], columns=["hook", "method", "row", "col", "value"])

    def plot(self, hook: Optional[str] = None, method: Optional[str] = None, *, share_scale: bool = True,
             readable: bool = True):
        """A plotly heatmap of one (hook, method) matrix as the seed draws it (RdBu, centred at 0):
        rows layers (or layer.head), columns positions ("28 ':'"), labels HTML-escaped, the colour
        bar naming the metric and direction. share_scale: one symmetric colour range for every
        method of the hook (attribution and exact side by side read alike). hook None: the only
        hook of the run."""
        from ._plot import heatmap, readable_position
        if hook is None:
            if len(self.hooks) != 1:
                raise ValueError(f"hook: the run has {self.hooks}; name one")
            hook = self.hooks[0]
        i = self._i(hook, method)
        mname = self.keys()[i][1]
        zmax = None
        if share_scale:
            mats = [self.matrix(hook, m) for h, m in self.keys() if h == hook]
            zmax = max(float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 0.0 for x in mats)
        cols = self.cols(hook, mname)
        if readable and hook_positions(cols):
            cols = [readable_position(c) for c in cols]
        d = self.to_dict()
        direction = d.get("direction", "denoise")
        metric = d["metric"]["name"]
        label = f"{metric}, normalised<br>(1 = clean, 0 = corrupted)<br>{direction}"
        titles = {"attribution": "attribution patching (AtP)", "atp-star": "AtP*", "activation": "activation patching (exact)"}
        rows = self.rows(hook, mname)
        y_title = "layer, head" if rows and re.match(r"^L\d+H\d+", str(rows[0])) else "layer"
        return heatmap(self.matrix(hook, mname), rows, cols, f"{hook}: {titles.get(mname, mname)}", label, zmax,
                       y_title=y_title, x_title="position" if hook_positions(self.cols(hook, mname)) else "head")

    # ---- the run as a whole -----------------------------------------------------------------
    @property
    def correlations(self):
        """Pearson / Spearman of attribution vs activation per hook (both methods run), a DataFrame
        (one row per hook; to_dict()['attribution_vs_activation'] has the same as dicts)."""
        return _pandas().DataFrame(self.to_dict().get("attribution_vs_activation", []))

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
