"""Model.patch against the command line: the same engine, the same numbers (bitwise on the same
backend and thread count), the same files."""
import json
import os

import numpy as np
import pytest

import phi3patch
from conftest import SEED_PAIRS, cli_results, run_cli


def assert_same_matrices(r, cli):
    assert [(e["hook"], e["method"]) for e in cli["results"]] == r.keys()
    for e in cli["results"]:
        a = r.matrix(e["hook"], e["method"])
        b = np.array(e["values"], dtype=np.float64)  # JSON null (NaN) -> nan
        assert a.dtype == np.float64 and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True), (e["hook"], e["method"], np.nanmax(np.abs(a - b)))
        assert r.rows(e["hook"], e["method"]) == e["rows"]
        assert r.cols(e["hook"], e["method"]) == e["cols"]


def test_default_run_equals_cli_bitwise(model, tmp_path):
    r = model.patch(progress=False)
    cli, _ = cli_results(tmp_path)
    assert_same_matrices(r, cli)
    assert r.clean_logit_diff == cli["clean_logit_diff"]
    assert r.corrupted_logit_diff == cli["corrupted_logit_diff"]
    assert r.position_labels == cli["position_labels"]
    assert r.correlations.to_dict("records") == cli["attribution_vs_activation"]
    for e in cli["results"]:
        if e["method"] == "activation":
            np.testing.assert_array_equal(r.ci95(e["hook"]), np.array(e["ci95_halfwidth"]))
            pp = r.per_prompt(e["hook"])
            assert pp.shape == (len(e["rows"]), len(e["cols"]), 4) and pp.dtype == np.float32
            np.testing.assert_array_equal(pp, np.array(e["per_prompt_metric"], dtype=np.float32))
            top = r.top(e["hook"], "activation", 10)
            assert list(zip(top["row"], top["col"])) == [(t["row"], t["col"]) for t in e["top10"]]


def test_options_equal_cli_bitwise(model, tmp_path):
    kw = dict(hooks=["z", "mlp_post", "resid_mid"], methods=["attribution", "atp-star"], direction="noise",
              verify_top=5, batch=1, bos=True, progress=False)
    r = model.patch(SEED_PAIRS, **kw)
    cli, _ = cli_results(tmp_path, "--hooks", "z,mlp_post,resid_mid", "--method", "attribution,atp-star",
                         "--direction", "noise", "--verify-top", "5", "--batch", "1", "--bos")
    assert_same_matrices(r, cli)
    assert len(r.verified) == 5
    assert r.verified == cli["verify_top"]["nodes"]
    assert r.to_dict()["direction"] == "noise"


def test_the_three_pair_forms_agree(model):
    with open(SEED_PAIRS, encoding="utf-8") as f:
        dicts = json.load(f)
    lists = ([p["clean"]["question"] for p in dicts], [p["clean"]["answer"] for p in dicts],
             [p["corrupted"]["question"] for p in dicts], [p["corrupted"]["answer"] for p in dicts])
    a = model.patch(SEED_PAIRS, hooks="resid_pre", progress=False)
    b = model.patch(dicts, hooks="resid_pre", progress=False)
    c = model.patch(lists, hooks="resid_pre", progress=False)
    for m in ("attribution", "activation"):
        np.testing.assert_array_equal(a.matrix("resid_pre", m), b.matrix("resid_pre", m))
        np.testing.assert_array_equal(a.matrix("resid_pre", m), c.matrix("resid_pre", m))
    assert b.to_dict()["pairs_file"] == "(pairs given in Python)"


def test_frame_is_labelled(model):
    r = model.patch(hooks=["resid_pre"], methods="attribution", progress=False)
    df = r.frame("resid_pre")  # one method: no need to name it
    assert list(df.index) == ["L0", "L1", "L2", "L3"]
    assert list(df.columns) == r.position_labels
    np.testing.assert_array_equal(df.to_numpy(), r.matrix("resid_pre", "attribution"))


def test_save_writes_the_cli_files(model, tmp_path):
    r = model.patch(progress=False)
    files = r.save(str(tmp_path / "py"))
    _, cli_dir = cli_results(tmp_path)
    cli_files = sorted(f for f in os.listdir(cli_dir) if (cli_dir / f).is_file())  # not checkpoints/
    assert sorted(os.path.basename(f) for f in files) == cli_files
    for name in os.listdir(cli_dir):
        if name.endswith(".csv"):
            assert (tmp_path / "py" / name).read_text() == (cli_dir / name).read_text(), name
    with pytest.raises(phi3patch.Error, match="results.json"):
        r.save(str(tmp_path / "py"))  # kept unless force
    r.save(str(tmp_path / "py"), force=True)


def test_out_writes_files_and_checkpoints(model, tmp_path):
    out = tmp_path / "o"
    r = model.patch(hooks="resid_pre", batch=1, out=str(out), progress=False)
    assert (out / "results.json").exists() and (out / "checkpoints").is_dir()
    again = model.patch(hooks="resid_pre", batch=1, out=str(out), force=True, progress=False)
    np.testing.assert_array_equal(r.matrix("resid_pre", "activation"), again.matrix("resid_pre", "activation"))


def test_progress_lines_reach_the_callable(model):
    lines = []
    model.patch(hooks="resid_pre", progress=lines.append)
    assert any("runs" in l for l in lines), lines


def test_tokenize_equals_cli(model):
    t = model.tokenize("The goal is to make one cup of cappuccino.")
    out = run_cli("tokenize", "The goal is to make one cup of cappuccino.").stdout
    assert out.splitlines()[0] == "ids: " + " ".join(map(str, t["ids"]))
    assert t["text"] == "The goal is to make one cup of cappuccino."
    assert t["pieces"][0] == "<s>"
    assert model.tokenize("x", bos=False)["ids"][0] != 1
