"""The seed notebook runs unchanged on phi3patch: every one of its 15 code cells, as in the seed
text (tests/python/data/seed_notebook.txt), with only the module's import and MODEL_NAME changed,
executed under nbclient with plotly; every figure builds with the seed's own arguments."""
import json
import os
import shutil
import sys

import pytest

from conftest import SEED_PAIRS, SOURCE

sys.path.insert(0, os.path.join(SOURCE, "tools"))
import seed_notebook  # noqa: E402  (tools/seed_notebook.py)

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed")
pytest.importorskip("plotly", reason="plotly not installed")

SHARED_SEED = os.path.join(SOURCE, "..", "shared", "seed", "000_9faeccf80bba0c8a.txt")


def seed_text():
    with open(seed_notebook.SEED_TEXT, encoding="utf-8") as f:
        return f.read()


def test_committed_seed_text_is_the_seed():
    if not os.path.isfile(SHARED_SEED):
        pytest.skip("the shared seed file is not beside this checkout (a clean clone): the committed copy stands")
    with open(SHARED_SEED, encoding="utf-8") as f:
        assert f.read() == seed_text()


def test_cells_are_the_seeds_with_two_changes():
    text = seed_text()
    seed = [s for k, s in seed_notebook.seed_cells(text) if k == "code"]
    ours = [s for k, s in seed_notebook.phi3patch_cells(text) if k == "code"]
    assert len(seed) == len(ours) == text.count("\nIn [") == 15
    changed = [i for i, (a, b) in enumerate(zip(seed, ours)) if a != b]
    assert changed == [0, 1]
    assert ours[0] == seed_notebook.IMPORT_LINE + "\n" + seed[0]
    assert ours[1] == seed[1].replace(seed_notebook.SEED_MODEL_LINE, seed_notebook.model_line("embedded"))
    # Each seed cell is the text right after its marker, up to the line before a blank one.
    lines = text.split("\n")
    for (start, end), src in zip(seed_notebook.CODE_SPANS, seed):
        assert "\n".join(lines[start:end]).rstrip("\n") == src
    # The committed example is this notebook.
    with open(os.path.join(SOURCE, "examples", "seed_notebook.ipynb"), encoding="utf-8") as f:
        committed = json.load(f)
    assert ["".join(c["source"]) for c in committed["cells"] if c["cell_type"] == "code"] == ours


def run_notebook(tmp_path, model="embedded"):
    nb = seed_notebook.notebook(seed_notebook.phi3patch_cells(seed_text(), model))
    nb = nbformat.reads(json.dumps(nb), as_version=4)
    shutil.copy(SEED_PAIRS, tmp_path / "temporal_scope_for_attribution_patching.json")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def zshape(z):
    """A heatmap's z shape: a nested list, or plotly's binary form {'bdata', 'dtype', 'shape'}."""
    if isinstance(z, dict):
        return tuple(int(x) for x in z["shape"].split(","))
    return (len(z), len(z[0]))


def text_of(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_every_seed_cell_runs(tmp_path):
    cells = run_notebook(tmp_path)
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(cells) for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    figures = [o["data"]["application/vnd.plotly.v1+json"] for c in cells for o in c.get("outputs", [])
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == 4  # residual / attn_out, attribution / activation
    titles = [f["layout"]["title"]["text"] for f in figures]
    assert titles == ["Residual Attribution Patching", "Attention Output Attribution Patching",
                      "Residual Activation Patching", "Attention Output Activation Patching"]
    shapes = []
    for f in figures:
        heat = f["data"][0]
        assert heat["type"] == "heatmap"
        shapes.append(zshape(heat["z"]))
        assert len(heat["y"]) == shapes[-1][0] == 4  # one row per layer of the embedded model
        assert len(heat["x"]) == shapes[-1][1]
        assert f["layout"]["xaxis"]["title"]["text"] == "Position"
    # The residual figures drop the first six positions (.iloc[:, 6:]); the attention ones keep all.
    assert shapes[0][1] == shapes[1][1] - 6 and shapes[2][1] == shapes[3][1] - 6
    assert figures[0]["data"][0]["y"] == ["L0", "L1", "L2", "L3"]  # y=residual_labels: the rows
    # The seed's printout: the padded strings, the answer ids, the top-3 tokens, the logit differences.
    built = text_of(cells[3])
    assert "Clean string 0 " in built and "<s> The goal is to make one cup of cappuccino." in built
    assert "Corrupted string 0 " in built and "Clean answers [" in built and "Corrupted answers [" in built
    ran = text_of(cells[4])
    assert "Clean logit TOP-3: [" in ran and "Clean logit diff: " in ran and "Corrupted logit diff: -" in ran
    clean_ld = float(ran.split("Clean logit diff: ")[1].split()[0])
    assert clean_ld > 0
