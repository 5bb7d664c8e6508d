"""The Python surface a notebook user expects: one method needs no method argument, method= and
a single string work, TransformerLens hook names, "did you mean" for keywords and values,
errors in Python's words, DataFrames for top() and correlations, plotly figures."""
import re

import numpy as np
import pytest

import phi3patch
from conftest import SEED_PAIRS


@pytest.fixture(scope="module")
def both(model):
    return model.patch(SEED_PAIRS, hooks=["resid_pre", "attn_out"], progress=False)


def test_one_method_needs_no_method_argument(model):
    r = model.patch(SEED_PAIRS, hooks="resid_pre", method="attribution", progress=False)
    assert r.methods == ["attribution"]
    np.testing.assert_array_equal(r.matrix("resid_pre"), r.matrix("resid_pre", "attribution"))
    assert r.rows("resid_pre") == r.rows("resid_pre", "attribution")
    assert list(r.frame("resid_pre").columns) == r.cols("resid_pre")
    with pytest.raises(TypeError, match="give methods= or method=, not both"):
        model.patch(method="attribution", methods="activation")


def test_labels_need_no_method_and_unknown_hooks_are_named(both):
    assert both.rows("resid_pre") == both.rows("resid_pre", "activation") == ["L0", "L1", "L2", "L3"]
    assert both.cols("attn_out") == both.cols("attn_out", "attribution") == both.position_labels
    with pytest.raises(ValueError, match="name one"):
        both.matrix("resid_pre")  # two methods: the values differ, so the method must be named
    with pytest.raises(KeyError, match="did you mean 'resid_pre'"):
        both.rows("resid_pr")


def test_transformerlens_hook_names(model):
    r = model.patch(SEED_PAIRS, hooks=["hook_resid_pre", "blocks.attn.hook_z", "hook_mlp_out"], methods="attribution",
                    progress=False)
    assert r.hooks == ["resid_pre", "z", "mlp_out"]
    ref = model.patch(SEED_PAIRS, hooks=["resid_pre", "z", "mlp_out"], methods="attribution", progress=False)
    for h in ref.hooks:
        np.testing.assert_array_equal(r.matrix(h), ref.matrix(h))
    with pytest.raises(ValueError, match=r"unknown hook 'hook_resid_pr'; did you mean 'hook_resid_pre'\?"):
        model.patch(hooks="hook_resid_pr", progress=False)
    with pytest.raises(ValueError, match=r"unknown hook 'atn_out'; did you mean 'attn_out'\?"):
        model.patch(hooks="atn_out", progress=False)


def test_did_you_mean_for_values_and_keywords(model):
    cases = [
        (dict(methods="attribtion"), ValueError, "did you mean 'attribution'"),
        (dict(metric="logit_diff"), ValueError, "did you mean 'logit-diff'"),
        (dict(direction="denoising"), ValueError, "did you mean 'denoise'"),
        (dict(recompute="of"), ValueError, "did you mean 'off'"),
        (dict(verfy_top=3), TypeError, "did you mean 'verify_top'"),
        (dict(answer_first=True), TypeError, "did you mean 'answer_first_token'"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            model.patch(SEED_PAIRS, progress=False, **kw)
    with pytest.raises(ValueError, match="did you mean 'cuda'"):
        phi3patch.load(device="cdua")
    with pytest.raises(TypeError, match="did you mean 'ig_steps'"):
        model.circuit(SEED_PAIRS, ig_step=3)


def test_errors_name_python_keywords(model):
    pairs = [{"clean": {"question": "The goal is to make one cup of cappuccino. The answer is:", "answer": "Constantinople"},
              "corrupted": {"question": "The goal is to become a future president. The answer is:", "answer": "long"}}]
    with pytest.raises(phi3patch.Error) as e:
        model.patch(pairs, progress=False)
    assert "answer_first_token=True" in str(e.value) and "--answer-first-token" not in str(e.value)
    from phi3patch._errors import pythonic
    assert pythonic("lower --mem-budget or --batch; or --no-bos") == "lower mem_budget= or batch=; or bos=False"
    assert pythonic("--positions: range 9:3 is empty; --no-such-flag") == "positions: range 9:3 is empty; --no-such-flag"


def test_top_and_correlations_are_dataframes(both):
    top = both.top("resid_pre", "activation", 5)
    assert list(top.columns) == ["hook", "method", "row", "col", "value"] and len(top) == 5
    m = both.matrix("resid_pre", "activation")
    assert abs(top["value"].iloc[0]) == np.nanmax(np.abs(m))
    assert list(np.abs(top["value"])) == sorted(np.abs(top["value"]), reverse=True)
    every = both.top(k=8)  # every hook, the exact method
    assert set(every["hook"]) <= {"resid_pre", "attn_out"} and set(every["method"]) == {"activation"}
    assert abs(every["value"].iloc[0]) == max(np.nanmax(np.abs(both.matrix(h, "activation"))) for h in both.hooks)
    c = both.correlations
    assert list(c["hook"]) == ["resid_pre", "attn_out"] and {"pearson", "spearman"} <= set(c.columns)


def test_plot_shares_a_scale_escapes_labels_and_reads_well(both):
    pytest.importorskip("plotly", reason="plotly not installed")
    fa, fx = both.plot("resid_pre", "attribution"), both.plot("resid_pre", "activation")
    ca, cx = fa.layout.coloraxis, fx.layout.coloraxis
    assert (ca.cmin, ca.cmax) == (cx.cmin, cx.cmax) and ca.cmin == -ca.cmax > -np.inf
    zmax = max(np.nanmax(np.abs(both.matrix("resid_pre", m))) for m in ("attribution", "activation"))
    assert ca.cmax == pytest.approx(zmax)
    x = list(fa.data[0].x)
    assert x[0].startswith("0 '&lt;") and "<" not in "".join(x)  # '<s>' (or the pad piece) escaped
    assert x[-1] == f"{len(x) - 1} ':'"  # "28 ':'": the position and the token as it reads
    assert "logit-diff" in ca.colorbar.title.text and "denoise" in ca.colorbar.title.text
    assert fa.layout.title.text == "resid_pre: attribution patching (AtP)"
    own = both.plot("attn_out", "activation", share_scale=False)
    assert own.layout.coloraxis.cmid == 0.0


def test_circuit_plot(model):
    pytest.importorskip("plotly", reason="plotly not installed")
    c = model.circuit(SEED_PAIRS, method="eap", progress=False)
    f = c.plot()
    assert list(f.data[0].y) == [p["faithfulness"] for p in c.faithfulness]
    s = c.plot("scores")
    assert np.array(s.data[0].z).shape == c.scores().shape
    with pytest.raises(ValueError, match="did you mean 'scores'"):
        c.plot("score")


def test_mix_layers_and_verify_top_alone_equal_the_cli(model, tmp_path):
    from conftest import cli_results
    r = model.patch(SEED_PAIRS, hooks=["blocks.0.hook_resid_pre", "blocks.3.attn.hook_z"], methods="activation",
                    mix=False, progress=False)
    cli, _ = cli_results(tmp_path, "--hooks", "resid_pre,z", "--method", "activation", "--layers", "0,3", "--no-mix")
    assert cli["exact_layers"] == [0, 3] and cli["mixed"] is False and len(r.prompts) == 2
    for e in cli["results"]:
        m = r.matrix(e["hook"])
        np.testing.assert_array_equal(m, np.array(e["values"], dtype=np.float64))
        layer_of = [int(re.match(r"L(\d+)", x).group(1)) for x in r.rows(e["hook"])]
        assert all(np.isnan(m[i]).all() == (layer_of[i] not in (0, 3)) for i in range(m.shape[0]))
    with pytest.raises(ValueError, match="not both"):
        model.patch(SEED_PAIRS, hooks="blocks.0.hook_resid_pre", layers=[1], progress=False)
    v = model.patch(SEED_PAIRS, hooks="resid_pre", verify_top=3, progress=False)
    assert v.methods == ["attribution", "atp-star", "verified"] and len(v.verified) == 3
