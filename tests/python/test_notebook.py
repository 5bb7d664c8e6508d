"""examples/seed_experiment.ipynb runs from top to bottom (nbclient), so it cannot rot."""
import os
import time

import pytest

from conftest import SOURCE

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed")


def test_seed_notebook_runs(tmp_path):
    path = os.path.join(SOURCE, "examples", "seed_experiment.ipynb")
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    seconds = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if "application/vnd.plotly.v1+json" in o.get("data", {}))
    assert figures >= 7, figures  # the heatmaps, the scatter, the per-head map, the curve, the seed flow's
    assert seconds < 120, seconds
