"""Bad input raises a Python exception naming the argument; the interpreter never crashes and
the model stays usable."""
import numpy as np
import pytest

import phi3patch
from conftest import SEED_PAIRS


def test_engine_errors_are_phi3patch_errors(tmp_path):
    with pytest.raises(phi3patch.Error, match="no-such-dir") as e:
        phi3patch.load(str(tmp_path / "no-such-dir"))
    assert isinstance(e.value, ValueError) and isinstance(e.value, RuntimeError)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(phi3patch.Error, match="config.json"):
        phi3patch.load(str(tmp_path / "bad"))
    assert issubclass(phi3patch.OutOfMemoryError, phi3patch.Error)
    assert issubclass(phi3patch.OutOfMemoryError, MemoryError)


def test_wrong_types_and_values_name_the_argument(model):
    with pytest.raises(TypeError, match="pairs"):
        model.patch(5, progress=False)
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        model.patch([1, 2], progress=False)
    with pytest.raises(ValueError, match="one length"):
        model.patch((["a b"], ["x"], ["c d", "e"], ["y"]), progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'hoks'; did you mean 'hooks'"):
        model.patch(hoks="resid_pre")
    with pytest.raises(ValueError, match="unknown hook 'resid'"):
        model.patch(hooks="resid", progress=False)
    with pytest.raises(ValueError, match="methods"):
        model.patch(methods="exact", progress=False)
    with pytest.raises(TypeError, match="batch"):
        model.patch(batch="2", progress=False)
    with pytest.raises(ValueError, match="direction"):
        model.patch(direction="sideways", progress=False)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        model.patch("nope.json", progress=False)
    with pytest.raises(TypeError, match="prompts"):
        model.run_with_cache(3)
    with pytest.raises(ValueError, match="dtype"):
        phi3patch.load(dtype="fp8")


def test_engine_input_errors(model):
    with pytest.raises(phi3patch.Error, match="more than the model's context"):
        model.run_with_cache(["word " * 600])
    with pytest.raises(phi3patch.Error, match="unknown hook name 'blocks.9.hook_resid_pre'"):
        model.run_with_cache(["The goal"], ["blocks.9.hook_resid_pre"])
    with pytest.raises(phi3patch.Error, match="unknown hook name 'blocks.0.hook_nothing'"):
        model.run_with_cache(["The goal"], ["blocks.0.hook_nothing"])
    bad = [{"clean": {"question": "The goal is", "answer": "short"},
            "corrupted": {"question": "The goal was", "answer": "short"}}]
    with pytest.raises(phi3patch.Error, match="both 'short'"):
        model.patch(bad, progress=False)
    with pytest.raises(phi3patch.Error, match="verify_top=") as e:  # the keyword, not the CLI flag
        model.patch(methods="activation", verify_top=3, progress=False)
    assert "--" not in str(e.value)
    with pytest.raises(ValueError, match="as many"):
        model.logit_diff(["a", "b"], ["short"], ["long"])
    # Still usable after every error.
    r = model.patch(SEED_PAIRS, hooks="resid_pre", methods="attribution", progress=False)
    assert np.isfinite(r.matrix("resid_pre")).all()
