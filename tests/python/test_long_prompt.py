"""Model.patch for long prompts: positions= restricts the exact sweep (the same numbers as
`phi3patch run --positions`, NaN elsewhere), recompute= checkpoints the estimates (bitwise the
full pass), and a mem_budget too small for one pair raises OutOfMemoryError before any work."""
import numpy as np
import pytest

import phi3patch
from conftest import cli_results


def test_positions_equal_cli_bitwise(model, tmp_path):
    r = model.patch(hooks=["resid_pre", "z"], positions="5:8,-1", progress=False)
    cli, _ = cli_results(tmp_path, "--hooks", "resid_pre,z", "--positions", "5:8,-1")
    assert r.to_dict()["exact_positions"] == cli["exact_positions"] == [5, 6, 7, cli["T"] - 1]
    for e in cli["results"]:
        assert np.array_equal(r.matrix(e["hook"], e["method"]), np.array(
            [np.nan if v is None else v for v in e["values"]], dtype=np.float64), equal_nan=True)
    a = r.matrix("resid_pre", "activation")
    assert np.isnan(a[:, 0]).all() and np.isfinite(a[:, 5]).all()
    assert r.to_dict()["exact_positions"] == model.patch(hooks=["resid_pre"], positions=[5, 6, 7, -1],
                                                          progress=False).to_dict()["exact_positions"]


def test_recompute_is_bitwise_the_full_pass(model):
    full = model.patch(hooks=["resid_pre", "z", "mlp_out"], methods="attribution", recompute="off", progress=False)
    ck = model.patch(hooks=["resid_pre", "z", "mlp_out"], methods="attribution", recompute="on", progress=False)
    for k in full.keys():
        assert np.array_equal(full.matrix(*k), ck.matrix(*k)), k


def test_budget_too_small_and_bad_values(model):
    with pytest.raises(phi3patch.OutOfMemoryError, match="one pair needs"):
        model.patch(methods="attribution", mem_budget=0.001, progress=False)
    with pytest.raises(ValueError, match="recompute"):
        model.patch(recompute="sometimes", progress=False)
    with pytest.raises(TypeError, match="positions"):
        model.patch(positions=[1.5], progress=False)
    with pytest.raises(phi3patch.Error, match=r"^positions: range 9:3 is empty"):
        model.patch(positions="9:3", progress=False)
