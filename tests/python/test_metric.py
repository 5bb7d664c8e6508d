"""Model.patch(metric=...) against `phi3patch run --metric`: the same numbers bit for bit, the
metric and its normalisation stated in results.json, and the metric's own properties (1 on
the clean run's last-layer residual, kl 0 on the clean run)."""
import numpy as np
import pytest

from conftest import cli_results


@pytest.mark.parametrize("metric", ["prob-diff", "logprob", "kl"])
def test_metric_equals_cli_bitwise(model, tmp_path, metric):
    r = model.patch(hooks=["resid_post", "z"], methods="all", metric=metric, progress=False)
    cli, _ = cli_results(tmp_path, "--hooks", "resid_post,z", "--method", "all", "--metric", metric)
    assert [(e["hook"], e["method"]) for e in cli["results"]] == r.keys()
    for e in cli["results"]:
        a = r.matrix(e["hook"], e["method"])
        assert np.array_equal(a, np.array(e["values"], dtype=np.float64), equal_nan=True), (e["hook"], e["method"])
    m = cli["metric"]
    assert m["name"] == metric and m["position"] == "last"
    assert m["normalisation"] == "(M - M_corrupted) / (M_clean - M_corrupted)"
    assert r.metric == m
    assert r.clean_metric == cli["clean_metric"] and r.corrupted_metric == cli["corrupted_metric"]
    if metric == "kl":
        assert cli["clean_metric"] == 0.0 and cli["corrupted_metric"] > 0
        assert all(p["clean_metric"] == 0.0 for p in cli["prompts"])
    # Raw per-prompt values under the metric's own key; the normalised ones as always.
    act = [e for e in cli["results"] if e["method"] == "activation"][0]
    raw = np.array(act[m["per_prompt_key"]], dtype=np.float32)
    assert raw.shape[-1] == 4
    np.testing.assert_array_equal(r.per_prompt(act["hook"], raw=True), raw)
    # Patching the clean residual into the last position of the last layer restores the clean
    # run: resid_post of the last layer at the last position is (nearly) 1 for every metric.
    v = r.matrix("resid_post", "activation")
    assert abs(v[-1, -1] - 1.0) < 1e-4


def test_default_metric_is_logit_diff(model):
    r = model.patch(hooks=["resid_pre"], methods="attribution", progress=False)
    assert r.metric["name"] == "logit-diff"
    assert r.metric["per_prompt_key"] == "per_prompt_logit_diff"
    assert r.clean_metric == r.clean_logit_diff


def test_unknown_metric(model):
    with pytest.raises(ValueError, match="metric: expected 'logit-diff', 'prob-diff', 'logprob', 'kl', got 'logit_diff'; did you mean 'logit-diff'\?"):
        model.patch(metric="logit_diff", progress=False)
