"""A drop-in for the seed notebook's own patching module: the same constructor and methods,
computed by the engine. Change the notebook's import to

    from phi3patch import AttributionPatching

and the rest of it runs unchanged (heatmaps of the returned DataFrames with the token labels)."""
from typing import List, Optional, Sequence, Tuple

from ._model import Model, load


class AttributionPatching:
    """Attribution patching of the residual stream and the attention outputs on clean/corrupted
    prompts, as the seed's module does (TransformerLens semantics: BOS, left padding, the pairs
    mixed both ways, the normalized logit-difference metric).

    model_dir: a checkpoint directory, 'phi-3' or None for the embedded model, or an already
    loaded phi3patch.Model (reused: nothing is loaded again)."""

    def __init__(self, model_dir, clean_prompts: Sequence[str], clean_answers: Sequence[str],
                 corrupted_prompts: Sequence[str], corrupted_answers: Sequence[str], device: str = "auto",
                 method: str = "attribution") -> None:
        if isinstance(model_dir, Model):
            self.model = model_dir
        else:
            self.model = load(None if model_dir in (None, "phi-3") else model_dir, device=device)
        self.pairs = (list(clean_prompts), list(clean_answers), list(corrupted_prompts), list(corrupted_answers))
        self.method = method
        self._results = {}

    def _run(self, hook: str):
        if hook not in self._results:
            self._results[hook] = self.model.patch(self.pairs, hooks=[hook], methods=[self.method], progress=False)
        return self._results[hook]

    def _patch(self, hook: str) -> Tuple["object", List[str]]:
        r = self._run(hook)
        df = r.frame(hook, self.method)
        return df, list(df.columns)

    def patch_residual(self):
        """(DataFrame [layer x position] of the residual stream's attribution, position labels)."""
        return self._patch("resid_pre")

    def patch_attn_out(self):
        """(DataFrame [layer x position] of the attention outputs' attribution, position labels)."""
        return self._patch("attn_out")

    def patch_mlp_out(self):
        """(DataFrame [layer x position] of the MLP outputs' attribution, position labels)."""
        return self._patch("mlp_out")

    def patch_heads(self):
        """(DataFrame [layer.head x position] of hook_z per head, position labels)."""
        return self._patch("z")

    def logit_diffs(self) -> Tuple[float, float]:
        """(clean, corrupted) mean logit differences over the mixed batch."""
        r = self._run("resid_pre")
        return r.clean_logit_diff, r.corrupted_logit_diff
