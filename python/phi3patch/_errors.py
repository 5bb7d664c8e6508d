"""Engine errors in Python's words: the engine's messages name command-line flags
(--answer-first-token); a Python caller reads the keyword it would pass (answer_first_token=True)."""
import contextlib
import re
from typing import Iterator

from . import _core

# Flag -> the keyword of Model.patch / Model.circuit / phi3patch.load that sets it.
FLAG_KEYWORDS = {
    "--answer-first-token": "answer_first_token=True",
    "--mem-budget": "mem_budget=",
    "--verify-top": "verify_top=",
    "--method": "methods=",
    "--hooks": "hooks=",
    "--positions": "positions=",
    "--layers": "layers=",
    "--recompute": "recompute=",
    "--metric": "metric=",
    "--direction": "direction=",
    "--no-bos": "bos=False",
    "--bos": "bos=True",
    "--no-mix": "mix=False",
    "--fp32": "dtype='fp32'",
    "--device": "device=",
    "--pairs": "pairs=",
    "--batch": "batch=",
    "--out": "out=",
    "--force": "force=True",
    "--resume": "resume=True",
    "--naive": "naive=True",
    "--edges": "edges=",
    "--edge-grid": "edge_grid=",
    "--ig-steps": "ig_steps=",
    "--select": "select=",
    "--target": "target=",
    "--model": "load(...)",
}
_FLAG = re.compile(r"--[a-z][a-z0-9-]*(?![a-z0-9-])(:?)")


def _keyword(m: "re.Match") -> str:
    flag, colon = m.group(0).rstrip(":"), m.group(1)
    kw = FLAG_KEYWORDS.get(flag)
    if kw is None:
        return m.group(0)
    if colon and kw.endswith("="):  # "--positions: bad" -> "positions: bad"
        return kw[:-1] + ":"
    return kw + colon


def pythonic(message: str) -> str:
    """The message with every known flag replaced by its keyword."""
    return _FLAG.sub(_keyword, message)


@contextlib.contextmanager
def python_words() -> Iterator[None]:
    try:
        yield
    except _core.Error as e:
        text = str(e)
        new = pythonic(text)
        if new == text:
            raise
        raise type(e)(new) from None
