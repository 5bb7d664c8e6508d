#!/usr/bin/env python3
"""A small SentencePiece test tokenizer in Gemma's layout, and the ids SentencePiece (and, where
transformers is installed, Hugging Face's GemmaTokenizer built from it) gives for the corpus of
tests/data/bpe/corpus.json.

    python3 tools/make_sp_tokenizers.py [--out tests/data/sp]     # needs: pip install sentencepiece

Layout (Gemma's tokenizer.model as public copies show it): BPE with byte fallback, digits split,
no dummy prefix, white space kept as is (no normalization, runs of spaces and newlines kept),
ids pad 0, eos 1, bos 2, unk 3, then <start_of_turn> / <end_of_turn> as user-defined symbols;
tokenizer_config.json with add_bos_token true (<bos>). Trained here, deterministically, on the
corpus itself (a few thousand pieces).

Writes <out>/gemma/tokenizer.model, tokenizer_config.json, special_tokens_map.json and
<out>/expected.json {"gemma": {"vocab_size", "ids": [[...]], "decoded": [...], "hf_agrees": bool}}.
tests/cpu/test_tokenizer.cpp asserts that the engine gives the same ids and text for every string.
"""
import argparse
import io
import json
import os

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/sp"))
    a = ap.parse_args()
    with open(os.path.join(ROOT, "tests/data/bpe/corpus.json"), encoding="utf-8") as f:
        texts = json.load(f)["texts"]
    d = os.path.join(a.out, "gemma")
    os.makedirs(d, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=3000,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], num_threads=1,
        max_sentence_length=100000, seed_sentencepiece_size=100000, minloglevel=2)
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
           "pad_token": "<pad>", "unk_token": "<unk>", "tokenizer_class": "GemmaTokenizer",
           "model_max_length": 1000000000000000019884624838656, "spaces_between_special_tokens": False}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}, f, indent=2)
        f.write("\n")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
    ids = [sp.encode(t) for t in texts]
    decoded = [sp.decode(i) for i in ids]
    hf_agrees, bos_ids = None, None
    try:  # what users get: transformers' GemmaTokenizer converted from the tokenizer.model
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(d)
        hf_agrees = all(hf.encode(t, add_special_tokens=False) == i for t, i in zip(texts, ids))
        bos_ids = hf.encode("Hello")
    except Exception as e:  # noqa: BLE001 - transformers optional
        print("transformers' GemmaTokenizer not compared:", e)
    out = {"gemma": {"vocab_size": sp.get_piece_size(), "ids": ids,
                     "decoded": [None if x == t else x for x, t in zip(decoded, texts)], "hf_agrees": hf_agrees,
                     "bos_ids": bos_ids}}
    with open(os.path.join(a.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"gemma: {sp.get_piece_size()} pieces, {sum(map(len, ids))} tokens over {len(texts)} texts; "
          f"transformers GemmaTokenizer agrees: {hf_agrees}")


if __name__ == "__main__":
    main()
