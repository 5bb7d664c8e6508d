"""Fixtures of the Python suite: the embedded model loaded once, the command line binary
(PHI3_CLI, set by CTest) and the source tree."""
import json
import os
import subprocess

import pytest

import phi3patch

SOURCE = os.environ.get("PHI3_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CLI = os.environ.get("PHI3_CLI", os.path.join(SOURCE, "build", "phi3patch"))
SEED_PAIRS = os.path.join(SOURCE, "data", "temporal_scope_for_attribution_patching.json")
EMBEDDED = os.path.join(SOURCE, "data", "models", "tiny-temporal-phi3")


@pytest.fixture(scope="session")
def model():
    return phi3patch.load(EMBEDDED, device="cpu")


def run_cli(*args, check=True):
    p = subprocess.run([CLI, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{CLI} {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def cli_results(tmp_path, *args):
    out = tmp_path / "cli"
    run_cli("run", "--device", "cpu", "--out", str(out), "--force", *args)
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f), out
