"""Where the embedded model and the seed's pairs are: inside the installed package (a wheel
ships them) or in the source tree the extension was built from."""
import os

from . import _core


def data_path(*parts: str) -> str:
    here = os.path.join(os.path.dirname(__file__), "data", *parts)
    if os.path.exists(here):
        return here
    return os.path.join(_core.source_dir(), "data", *parts)
