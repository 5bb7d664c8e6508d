"""The `pairs` argument: a pairs file, a list of pair dicts, or the seed's four lists."""
import json
import os
from typing import Any, Sequence, Tuple

IN_MEMORY = "(pairs given in Python)"


def _is_str_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x)


def from_lists(clean_prompts: Sequence[str], clean_answers: Sequence[str], corrupted_prompts: Sequence[str],
               corrupted_answers: Sequence[str]) -> list:
    """The seed's four lists as pair dicts (the engine mixes each pair both ways, as the seed does)."""
    names = ("clean_prompts", "clean_answers", "corrupted_prompts", "corrupted_answers")
    lists = (clean_prompts, clean_answers, corrupted_prompts, corrupted_answers)
    for n, l in zip(names, lists):
        if isinstance(l, str) or not _is_str_list(l):
            raise TypeError(f"{n}: expected a list of strings, got {type(l).__name__}")
    lengths = {n: len(l) for n, l in zip(names, lists)}
    if len(set(lengths.values())) != 1:
        raise ValueError("the four lists must have one length: " + ", ".join(f"{n} {k}" for n, k in lengths.items()))
    if not clean_prompts:
        raise ValueError("clean_prompts: no prompt given")
    return [
        {"clean": {"question": cp, "answer": ca}, "corrupted": {"question": xp, "answer": xa}}
        for cp, ca, xp, xa in zip(clean_prompts, clean_answers, corrupted_prompts, corrupted_answers)
    ]


def pairs_text(pairs: Any) -> Tuple[str, str]:
    """(JSON text, name for messages) of `pairs`; TypeError / ValueError naming what is wrong."""
    if isinstance(pairs, (str, os.PathLike)):
        path = os.fspath(pairs)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pairs: no such file '{path}'")
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    if isinstance(pairs, tuple) and len(pairs) == 4 and all(_is_str_list(x) for x in pairs):
        return json.dumps(from_lists(*pairs), ensure_ascii=False), IN_MEMORY
    if isinstance(pairs, (list, tuple)):
        if not pairs:
            raise ValueError("pairs: the list of pairs is empty")
        for i, p in enumerate(pairs):
            if not isinstance(p, dict):
                raise TypeError(f"pairs[{i}]: expected a dict with keys 'clean' and 'corrupted' "
                                f"(or pass the seed's four lists as a tuple), got {type(p).__name__}")
        return json.dumps(list(pairs), ensure_ascii=False), IN_MEMORY
    raise TypeError("pairs: expected a pairs file path, a list of {'clean': {...}, 'corrupted': {...}} dicts or the "
                    f"tuple (clean_prompts, clean_answers, corrupted_prompts, corrupted_answers), got {type(pairs).__name__}")
