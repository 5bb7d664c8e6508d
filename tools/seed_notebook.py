#!/usr/bin/env python3
"""The seed notebook (tests/python/data/seed_notebook.txt, the project's origin as exported text)
as a Jupyter notebook that runs on phi3patch: its 15 code cells verbatim, with two changes only —
the seed's module is imported from phi3patch, and MODEL_NAME names a model phi3patch can load
(the embedded one by default). tests/python/test_seed_notebook.py executes it; this script
writes examples/seed_notebook.ipynb:

    python3 tools/seed_notebook.py [--model NAME] [--out examples/seed_notebook.ipynb]
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEED_TEXT = os.path.join(HERE, "..", "tests", "python", "data", "seed_notebook.txt")

# Each code cell of the seed text: (line of its "In [..]:" marker, last code line), 1-based.
CODE_SPANS = [(15, 42), (46, 48), (52, 76), (81, 84), (104, 105), (116, 125), (131, 132), (143, 152), (156, 165),
              (171, 174), (189, 190), (203, 212), (218, 219), (232, 241), (245, 251)]
IMPORT_LINE = "from phi3patch import patching_algorithms  # phi3patch: the seed's module, computed by the engine"
SEED_MODEL_LINE = 'MODEL_NAME = "phi-3"'


def model_line(model: str) -> str:
    return f"MODEL_NAME = {json.dumps(model)}  # phi3patch: the seed had {SEED_MODEL_LINE[13:]} (microsoft/Phi-3-mini-4k-instruct)"


def seed_cells(text: str):
    """[(kind, source)]: the seed's markdown (headers and bullets) and code cells, in order."""
    lines = text.split("\n")
    cells, prev_end = [], 0
    for start, end in CODE_SPANS:
        if not lines[start - 1].startswith("In ["):
            raise ValueError(f"line {start} of the seed text is not an 'In [..]:' marker: {lines[start - 1]!r}")
        md = [l for l in lines[prev_end:start - 1] if l.startswith(("#", "- "))]
        if md:
            cells.append(("markdown", "\n".join(md)))
        code = lines[start:end]
        if end < len(lines) and lines[end].strip():
            raise ValueError(f"the code cell at line {start} does not end at line {end}")
        cells.append(("code", "\n".join(code).rstrip("\n")))
        prev_end = end
    return cells


def phi3patch_cells(text: str, model: str = "embedded"):
    """seed_cells with the two changes."""
    out = []
    code_seen = 0
    for kind, src in seed_cells(text):
        if kind == "code":
            code_seen += 1
            if code_seen == 1:
                src = IMPORT_LINE + "\n" + src
            elif SEED_MODEL_LINE in src.split("\n"):
                src = "\n".join(model_line(model) if l == SEED_MODEL_LINE else l for l in src.split("\n"))
        out.append((kind, src))
    return out


def notebook(cells) -> dict:
    count = iter(range(10 ** 6))

    def cell(kind, src):
        c = {"cell_type": kind, "id": f"seed-{next(count)}", "metadata": {}, "source": src.splitlines(keepends=True)}
        if kind == "code":
            c.update({"execution_count": None, "outputs": []})
        return c
    intro = ("# The seed notebook, on phi3patch\n\nThe project's seed notebook, cell for cell, with two changes: "
             "`patching_algorithms` is phi3patch's (first cell) and `MODEL_NAME` names a model phi3patch loads — "
             "`\"embedded\"` (the small Phi-3 in the package), a checkpoint directory, a Hugging Face hub id from the "
             "local cache, or the seed's own `\"phi-3\"` (microsoft/Phi-3-mini-4k-instruct). The dataset file must be in "
             "the working directory (`phi3patch.seed_pairs_file()` gives its path).")
    return {"cells": [cell("markdown", intro)] + [cell(k, s) for k, s in cells],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "examples", "seed_notebook.ipynb"))
    a = ap.parse_args()
    with open(SEED_TEXT, encoding="utf-8") as f:
        nb = notebook(phi3patch_cells(f.read(), a.model))
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {sum(1 for c in nb['cells'] if c['cell_type'] == 'code')} code cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
