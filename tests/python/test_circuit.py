"""Model.circuit against `phi3patch circuit`: the same scores and faithfulness curve."""
import csv
import json

import numpy as np

from conftest import run_cli


def test_circuit_equals_cli(model, tmp_path):
    c = model.circuit(method="eap-ig", ig_steps=3, progress=False)
    run_cli("circuit", "--device", "cpu", "--ig-steps", "3", "--out", str(tmp_path / "cli"), "--force")
    with open(tmp_path / "cli" / "circuit.json", encoding="utf-8") as f:
        cj = json.load(f)
    d = c.to_dict()
    assert d["faithfulness"] == cj["faithfulness"] and d["circuit"] == cj["circuit"]
    s, exists = c.scores(), c.edge_exists()
    assert s.shape == (len(c.upstream), len(c.downstream)) and s.dtype == np.float32
    assert int(exists.sum()) == cj["graph"]["edges"]
    with open(tmp_path / "cli" / "edges.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    up, down = {n: i for i, n in enumerate(c.upstream)}, {n: i for i, n in enumerate(c.downstream)}
    for row in rows[:50]:
        assert abs(float(s[up[row["upstream"]], down[row["downstream"]]]) - float(row["score"])) <= 1e-8 + 1e-6 * abs(float(row["score"]))
    e = c.edges()
    assert list(e.columns) == ["upstream", "downstream", "score"] and len(e) == len(rows)
    assert (e["upstream"].iloc[0], e["downstream"].iloc[0]) == (rows[0]["upstream"], rows[0]["downstream"])
    files = c.save(str(tmp_path / "py"))
    assert {f.split("/")[-1] for f in files} == {"edges.csv", "circuit.json", "faithfulness.svg", "circuit.svg", "report.html"}
