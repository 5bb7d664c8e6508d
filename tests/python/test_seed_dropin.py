"""The seed notebook's module, phi3patch.patching_algorithms: its DataFrames are the engine's
matrices (rows the layers, named by the labels it returns; columns the positions), on the seed's
own lists (mixed both ways by the notebook, used as given)."""
import json

import numpy as np
import pytest

import phi3patch
from conftest import EMBEDDED, SEED_PAIRS, cli_results


def seed_lists():
    """The four lists as the seed notebook builds them (each pair, then the pair swapped)."""
    with open(SEED_PAIRS, encoding="utf-8") as f:
        data = json.load(f)
    cp, ca, xp, xa = [], [], [], []
    for s in data:
        cp += [s["clean"]["question"], s["corrupted"]["question"]]
        ca += [s["clean"]["answer"], s["corrupted"]["answer"]]
        xp += [s["corrupted"]["question"], s["clean"]["question"]]
        xa += [s["corrupted"]["answer"], s["clean"]["answer"]]
    return cp, ca, xp, xa


def test_both_import_forms():
    from phi3patch import patching_algorithms as a
    import phi3patch.patching_algorithms as b
    assert a is b and a.AttributionPatching is phi3patch.AttributionPatching
    assert a.ActivationPatching is phi3patch.ActivationPatching


@pytest.mark.parametrize("cls,method", [("AttributionPatching", "attribution"), ("ActivationPatching", "activation")])
def test_seed_classes_equal_cli(model, tmp_path, capsys, cls, method):
    p = getattr(phi3patch.patching_algorithms, cls)(model, *seed_lists())
    built = capsys.readouterr().out
    cli, _ = cli_results(tmp_path, "--method", method, "--hooks", "resid_pre,attn_out")
    by = {e["hook"]: e for e in cli["results"]}
    answer_ids = [x["answer_id"] for x in cli["prompts"]]
    other_ids = [x["other_id"] for x in cli["prompts"]]
    assert p.clean_answer_ids == answer_ids and p.corrupted_answer_ids == other_ids
    assert f"Clean answers {answer_ids}\nCorrupted answers {other_ids}\n" in built
    first = built.splitlines()[0]
    assert first.startswith("Clean string 0 <|endoftext|>") and first.endswith("<s> The goal is to make one cup of cappuccino. "
                                                                              "Is this a short-term or long-term goal? The answer is:")
    for call, hook in ((p.patch_residual, "resid_pre"), (p.patch_attn_out, "attn_out")):
        out = call()
        df, labels = out if method == "attribution" else (out, None)
        if labels is not None:
            assert labels == list(df.index) == by[hook]["rows"]  # the labels name the rows
        assert df.shape == (4, len(cli["position_labels"]))
        assert list(df.columns) == cli["position_labels"]
        np.testing.assert_array_equal(df.to_numpy(), np.array(by[hook]["values"]))
        printed = capsys.readouterr().out
        assert f"Clean logit diff: {cli['clean_logit_diff']:.4f}\nCorrupted logit diff: {cli['corrupted_logit_diff']:.4f}" in printed
        assert "Clean logit TOP-3: ['" in printed
    clean, corrupted = p.logit_diffs()
    assert clean == cli["clean_logit_diff"] and corrupted == cli["corrupted_logit_diff"]
    assert p.result("resid_pre").prompts[0]["clean"] == seed_lists()[0][0]
    assert len(p.result("resid_pre").prompts) == 4  # used as given: not mixed a second time


def test_seed_constructor_loads_a_directory_and_names(capsys):
    ap = phi3patch.patching_algorithms.AttributionPatching(EMBEDDED, *seed_lists(), device="cpu")
    df, labels = ap.patch_residual()
    assert df.shape[0] == len(labels) == 4
    out = capsys.readouterr().out
    assert f"Loaded model {EMBEDDED} into phi3patch: Phi3ForCausalLM, 4 layers" in out
    ap = phi3patch.patching_algorithms.AttributionPatching("embedded", *seed_lists(), device="cpu")
    assert "phi3patch: model 'embedded' -> the embedded model" in capsys.readouterr().out


def test_seed_constructor_checks_answers_before_work(model):
    cp, ca, xp, xa = seed_lists()
    with pytest.raises(phi3patch.Error, match="Constantinople"):
        phi3patch.patching_algorithms.ActivationPatching(model, cp, ["Constantinople"] * 4, xp, xa, verbose=False)
