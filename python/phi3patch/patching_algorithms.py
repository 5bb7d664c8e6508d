"""The seed notebook's own module, computed by the engine: the same two classes, constructor,
methods, return values and printout. A notebook written for the seed's module runs unchanged with

    from phi3patch import patching_algorithms      # or: import phi3patch.patching_algorithms as patching_algorithms

    attr_patch = patching_algorithms.AttributionPatching(MODEL_NAME, clean_prompts, clean_answers,
                                                         corrupted_prompts, corrupted_answers)
    residual_attr, residual_labels = attr_patch.patch_residual()     # (DataFrame, row labels)
    act_patch = patching_algorithms.ActivationPatching(MODEL_NAME, ...)
    residual_act = act_patch.patch_residual()                        # DataFrame

Every DataFrame has one row per component (layer; 'L3.H7' per head) and one column per position
('28 :' = index and token); the labels returned beside attribution results name the rows, as
px.imshow(df, y=labels) wants. Values are the normalized logit difference (1 = clean, 0 =
corrupted), AtP for AttributionPatching and exact activation patching for ActivationPatching.

The four lists are used as given, one prompt row each (the seed mixes its pairs both ways
itself before it builds them); MODEL_NAME is a checkpoint directory, a Hugging Face hub id
('microsoft/Phi-3-mini-4k-instruct', read from the local cache), a TransformerLens name
('phi-3'), None or 'embedded' for the small model embedded in phi3patch, or a loaded
phi3patch.Model (reused)."""
from typing import Dict, List, Optional, Sequence, Tuple

from ._model import Model, load
from ._pairs import from_lists
from ._progress import ProgressArg
from ._result import PatchResult

__all__ = ["AttributionPatching", "ActivationPatching"]


def _padded_text(e, pads: List[int], ids: List[int]) -> str:
    """A left-padded prompt as TransformerLens' to_string shows it: pads and BOS as their tokens,
    then the text ('<|endoftext|><|endoftext|><s> The goal is ...')."""
    text = e.decode(pads + ids)
    if ids and ids[0] == e.bos_id:  # the tokenizer's decode leaves BOS out: put it where it was
        head = e.decode(pads) if pads else ""
        bos = e.label(ids[0])
        if text.startswith(head) and not text[len(head):].startswith(bos):
            text = head + bos + text[len(head):]
    return text


class _SeedPatching:
    _method = ""

    def __init__(self, model_name, clean_prompts: Sequence[str], clean_answers: Sequence[str],
                 corrupted_prompts: Sequence[str], corrupted_answers: Sequence[str], device: str = "auto",
                 dtype: str = "bf16", verbose: bool = True, progress: ProgressArg = True) -> None:
        self.pairs = from_lists(clean_prompts, clean_answers, corrupted_prompts, corrupted_answers)
        self.verbose = verbose
        self.progress = progress
        if isinstance(model_name, Model):
            self.model = model_name
        else:
            self.model = load(model_name, device=device, dtype=dtype, verbose=verbose)
            self._say(f"Loaded model {model_name} into phi3patch: {self.model.config['architecture']}, "
                      f"{self.model.n_layers} layers, from {self.model.dir} on {self.model.device}")
        self._results: Dict[str, PatchResult] = {}
        e = self.model._e
        # What the seed printed when it built its inputs: the first padded prompts and the answer ids
        # (every answer is checked to be one token here, before any work).
        rows = [e.tokenize(p["clean"]["question"], -1)[0] for p in self.pairs]
        rows += [e.tokenize(p["corrupted"]["question"], -1)[0] for p in self.pairs]
        T = max(len(r) for r in rows)
        pad = [e.pad_token_id]
        n = len(self.pairs)
        self.clean_answer_ids = [e.answer_token(p["clean"]["answer"]) for p in self.pairs]
        self.corrupted_answer_ids = [e.answer_token(p["corrupted"]["answer"]) for p in self.pairs]
        self._say(f"Clean string 0 {_padded_text(e, pad * (T - len(rows[0])), list(rows[0]))}")
        self._say(f"Corrupted string 0 {_padded_text(e, pad * (T - len(rows[n])), list(rows[n]))}")
        self._say(f"Clean answers {self.clean_answer_ids}")
        self._say(f"Corrupted answers {self.corrupted_answer_ids}")

    def _say(self, line: str) -> None:
        if self.verbose:
            print(line)

    def result(self, hook: str) -> PatchResult:
        """The full phi3patch.PatchResult behind a hook's DataFrame (per-prompt values, CIs, files)."""
        if hook not in self._results:
            hooks = [hook]
            if self._method == "attribution":  # one forward/backward gives every hook: compute the seed's two at once
                hooks = list(dict.fromkeys([hook, "resid_pre", "attn_out"]))
            r = self.model.patch(self.pairs, hooks=hooks, methods=[self._method], mix=False,
                                 progress=self.progress if self._method == "activation" else False)
            for h in hooks:
                self._results[h] = r
        return self._results[hook]

    def _frame(self, hook: str):
        r = self.result(hook)
        if self.verbose:
            self._print_run(r)
        return r.frame(hook, self._method)

    def _print_run(self, r: PatchResult) -> None:
        rows = r._r.batch_rows()
        e = self.model._e
        tops = [e.decode([t[1] for t in row[2]]) for row in rows], [e.decode([t[1] for t in row[3]]) for row in rows]
        print(f"\nClean logit TOP-3: {tops[0]}\n")
        print(f"Corrupted logit TOP-3: {tops[1]}\n\n")
        print(f"Clean logit diff: {r.clean_logit_diff:.4f}")
        print(f"Corrupted logit diff: {r.corrupted_logit_diff:.4f}")

    def logit_diffs(self) -> Tuple[float, float]:
        """(clean, corrupted) mean logit differences over the prompts."""
        r = self.result("resid_pre")
        return r.clean_logit_diff, r.corrupted_logit_diff


class AttributionPatching(_SeedPatching):
    """Attribution patching (AtP: one forward and backward pass) of the residual stream and the
    attention outputs: each method returns (DataFrame [component x position], row labels)."""

    _method = "attribution"

    def _patch(self, hook: str) -> Tuple["object", List[str]]:
        df = self._frame(hook)
        return df, list(df.index)

    def patch_residual(self):
        """(DataFrame [layer x position] of AtP on hook_resid_pre, layer labels)."""
        return self._patch("resid_pre")

    def patch_attn_out(self):
        """(DataFrame [layer x position] of AtP on hook_attn_out, layer labels)."""
        return self._patch("attn_out")

    def patch_mlp_out(self):
        """(DataFrame [layer x position] of AtP on hook_mlp_out, layer labels)."""
        return self._patch("mlp_out")

    def patch_heads(self):
        """(DataFrame [layer.head x position] of AtP on attn.hook_z per head, labels)."""
        return self._patch("z")


class ActivationPatching(_SeedPatching):
    """Exact activation patching of every (layer, position) of the residual stream and the
    attention outputs, by the engine's prefix-reusing sweep (the same numbers as one forward
    pass per patch); each method returns a DataFrame [component x position]. A progress bar
    counts the patched runs."""

    _method = "activation"

    def patch_residual(self):
        """DataFrame [layer x position]: the metric with hook_resid_pre patched at (layer, position)."""
        return self._frame("resid_pre")

    def patch_attn_out(self):
        """DataFrame [layer x position]: the metric with hook_attn_out patched at (layer, position)."""
        return self._frame("attn_out")

    def patch_mlp_out(self):
        """DataFrame [layer x position]: the metric with hook_mlp_out patched at (layer, position)."""
        return self._frame("mlp_out")

    def patch_heads(self):
        """DataFrame [layer.head x position]: the metric with one head's attn.hook_z patched."""
        return self._frame("z")
