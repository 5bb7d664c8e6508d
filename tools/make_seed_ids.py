#!/usr/bin/env python3
"""Write a pre-tokenized pairs file: every question and answer of a text pairs file encoded with
a real SentencePiece tokenizer.model (no BOS: the engine prepends it unless --no-bos).

    python3 tools/make_seed_ids.py --tokenizer ../shared/phi3-reference/tokenizer.model \
        --pairs data/temporal_scope_for_attribution_patching.json --out data/seed_phi3_ids.json

data/seed_phi3_ids.json was made this way from the Phi-3-mini tokenizer (the seed's two pairs;
with BOS the longest prompt is T = 31, answers 3273 ▁short / 1472 ▁long). Benchmarks on a
random Phi-3-mini-shaped checkpoint (`phi3patch make-random`) read it so that they run the
seed's real batch shape.
"""
import argparse
import json
import os

import sentencepiece as spm


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    out = []
    for p in json.load(open(a.pairs)):
        pair = {}
        for side in ("clean", "corrupted"):
            q, ans = p[side]["question"], p[side]["answer"]
            aid = sp.encode(ans)
            assert len(aid) == 1, f"answer {ans!r} is {len(aid)} tokens"
            pair[side] = {"question": q, "ids": sp.encode(q), "answer": ans, "answer_id": aid[0]}
        out.append(pair)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("[\n" + ",\n".join(" " + json.dumps(x) for x in out) + "\n]\n")
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
