"""The seed notebook's module, replaced by phi3patch.AttributionPatching: its DataFrames are
the engine's attribution matrices with the position labels."""
import json

import numpy as np

import phi3patch
from conftest import SEED_PAIRS, cli_results


def seed_lists():
    with open(SEED_PAIRS, encoding="utf-8") as f:
        p = json.load(f)
    return ([x["clean"]["question"] for x in p], [x["clean"]["answer"] for x in p],
            [x["corrupted"]["question"] for x in p], [x["corrupted"]["answer"] for x in p])


def test_seed_flow_equals_cli(model, tmp_path):
    ap = phi3patch.AttributionPatching(model, *seed_lists())
    cli, _ = cli_results(tmp_path, "--method", "attribution", "--hooks", "resid_pre,attn_out")
    by = {e["hook"]: e for e in cli["results"]}
    for call, hook in ((ap.patch_residual, "resid_pre"), (ap.patch_attn_out, "attn_out")):
        df, labels = call()
        assert labels == cli["position_labels"] == list(df.columns)
        assert list(df.index) == by[hook]["rows"]
        np.testing.assert_array_equal(df.to_numpy(), np.array(by[hook]["values"]))
    clean, corrupted = ap.logit_diffs()
    assert clean == cli["clean_logit_diff"] and corrupted == cli["corrupted_logit_diff"]


def test_seed_constructor_loads_a_directory():
    from conftest import EMBEDDED
    ap = phi3patch.AttributionPatching(EMBEDDED, *seed_lists(), device="cpu")
    df, labels = ap.patch_residual()
    assert df.shape == (4, len(labels))
