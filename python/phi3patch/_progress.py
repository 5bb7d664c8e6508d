"""Progress of a call: the engine's lines as tqdm bars (when tqdm is installed; tqdm.auto shows
notebook widgets) or plain lines on stderr."""
import re
import sys
from typing import Any, Callable, Optional, Union

_RUNS = re.compile(r"^\s*(.*): (\d+)/(\d+) runs$")

ProgressArg = Union[bool, Callable[[str], Any], None]


class _Lines:
    def __init__(self) -> None:
        try:
            from tqdm.auto import tqdm  # type: ignore
        except Exception:  # noqa: BLE001 - any import problem means plain lines
            tqdm = None
        self._tqdm = tqdm
        self._bars: dict = {}

    def __call__(self, line: str) -> None:
        m = _RUNS.match(line)
        if self._tqdm is not None and m:
            what, done, total = m.group(1), int(m.group(2)), int(m.group(3))
            bar = self._bars.get(what)
            if bar is None:
                bar = self._bars[what] = self._tqdm(total=total, desc=what, unit="run", leave=False)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
                del self._bars[what]
            return
        if self._tqdm is not None:
            self._tqdm.write("[phi3patch] " + line, file=sys.stderr)
        else:
            print("[phi3patch] " + line, file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def make_progress(progress: ProgressArg) -> Optional[Callable[[str], Any]]:
    if progress is None or progress is False:
        return None
    if progress is True:
        return _Lines()
    if callable(progress):
        return progress
    raise TypeError(f"progress: expected True, False or a callable taking a line, got {type(progress).__name__}")
