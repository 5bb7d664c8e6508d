"""The result of Model.circuit: edge scores as arrays / DataFrames, the faithfulness curve and
the chosen circuit (circuit.json's content)."""
import json
from typing import Any, Dict, List, Optional

import numpy as np


class CircuitResult:
    def __init__(self, core_result: Any) -> None:
        self._r = core_result
        self._dict: Optional[Dict[str, Any]] = None

    def scores(self) -> np.ndarray:
        """[upstream, downstream] float32 edge scores (0 where no edge exists; edge_exists() says)."""
        return self._r.scores()

    def edge_exists(self) -> np.ndarray:
        return self._r.edge_exists().astype(bool)

    @property
    def upstream(self) -> List[str]:
        """Upstream node names: 'input', 'a3.h7' (head 7 of layer 3), 'm3' (MLP 3)."""
        return list(self._r.upstream_names())

    @property
    def downstream(self) -> List[str]:
        """Downstream node names: 'a3.h7<q>', 'a3.h1<k>', 'a3.h1<v>', 'm3', 'logits'."""
        return list(self._r.downstream_names())

    def edges(self):
        """Every edge with its score, largest |score| first, as a pandas DataFrame (upstream,
        downstream, score)."""
        import pandas as pd  # type: ignore
        s, e = self.scores(), self.edge_exists()
        u, v = np.nonzero(e)
        vals = s[u, v]
        order = np.argsort(-np.abs(vals), kind="stable")
        up, down = self.upstream, self.downstream
        return pd.DataFrame({"upstream": [up[i] for i in u[order]], "downstream": [down[j] for j in v[order]],
                             "score": vals[order]})

    @property
    def faithfulness(self) -> List[Dict[str, Any]]:
        """The curve: [{'k', 'edges_after_pruning', 'logit_diff', 'faithfulness', ...}, ...]."""
        return list(self.to_dict()["faithfulness"])

    @property
    def circuit(self) -> Dict[str, Any]:
        """The chosen circuit: k, edges after pruning, faithfulness, its nodes and edges."""
        return dict(self.to_dict()["circuit"])

    def plot(self, kind: str = "faithfulness"):
        """A plotly figure: 'faithfulness' (the curve over the number of edges kept, log x) or
        'scores' (every edge's score, upstream x downstream, RdBu centred at 0)."""
        from ._plot import heatmap, plotly_express
        from ._names import did_you_mean
        if kind == "faithfulness":
            import pandas as pd  # type: ignore
            px = plotly_express()
            curve = pd.DataFrame(self.faithfulness)
            d = self.to_dict()
            return px.line(curve, x="edges_after_pruning", y="faithfulness", log_x=True, markers=True,
                           title=f"faithfulness of the top-k circuits ({d['method']}, {d['graph']['edges']} edges)",
                           labels={"edges_after_pruning": "edges kept (after pruning)",
                                   "faithfulness": "faithfulness (1 = full model)"})
        if kind == "scores":
            s = np.where(self.edge_exists(), self.scores(), np.nan)
            return heatmap(s, self.upstream, self.downstream, f"{self.to_dict()['method']} edge scores",
                           "score", y_title="upstream", x_title="downstream")
        raise ValueError(f"kind: expected 'faithfulness' or 'scores', got {kind!r}"
                         f"{did_you_mean(kind, ('faithfulness', 'scores'))}")

    def to_dict(self) -> Dict[str, Any]:
        if self._dict is None:
            self._dict = json.loads(self._r.json())
        return self._dict

    def save(self, out_dir: str, force: bool = False) -> List[str]:
        """Writes the command line's files (edges.csv, circuit.json, SVGs, report.html)."""
        from . import _core
        _core.prepare_circuit_out(str(out_dir), bool(force))
        return list(self._r.save(str(out_dir)))

    def __repr__(self) -> str:
        d = self.to_dict()
        return f"<phi3patch.CircuitResult {d['method']} {d['graph']['edges']} edges, circuit of {d['circuit']['edges_after_pruning']}>"
