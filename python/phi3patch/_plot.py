"""Figures for notebooks (plotly, an optional dependency: pip install "phi3patch[notebook]"):
the seed's heatmap (RdBu, centred at 0) with readable, HTML-escaped labels."""
import html
import re
from typing import Any, List, Optional, Sequence

_LABEL = re.compile(r"^(\d+):(.*)$", re.S)


def plotly_express():
    try:
        import plotly.express as px  # type: ignore
    except ImportError as e:
        raise ImportError('plotting needs plotly: pip install plotly (or pip install "phi3patch[notebook]")') from e
    return px


def token_text(piece: str) -> str:
    """A token's text as it reads: SentencePiece's '▁' and byte-level BPE's 'Ġ' are spaces, 'Ċ' a newline."""
    return piece.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")


def readable_position(label: str) -> str:
    """'28:▁is' -> "28 ' is'" (the position and the token as a quoted string); other labels as they are."""
    m = _LABEL.match(label)
    if not m:
        return label
    return f"{m.group(1)} {token_text(m.group(2))!r}"


def escaped(labels: Sequence[str]) -> List[str]:
    """Labels plotly shows as written: '<s>' would be read as a tag (struck-through text)."""
    return [html.escape(str(l), quote=False) for l in labels]


def heatmap(values: Any, rows: Sequence[str], cols: Sequence[str], title: str, color_label: str,
            zmax: Optional[float] = None, y_title: str = "layer", x_title: str = "position"):
    """px.imshow as the seed draws its results (RdBu, midpoint 0), labels escaped; a symmetric
    colour range [-zmax, zmax] when zmax is given (one scale for the methods of a hook)."""
    px = plotly_express()
    kw = {}
    if zmax is not None and zmax > 0:
        kw["range_color"] = [-zmax, zmax]
    else:
        kw["color_continuous_midpoint"] = 0.0
    fig = px.imshow(values, x=escaped(cols), y=escaped(rows), color_continuous_scale="RdBu", aspect="auto",
                    labels={"x": x_title, "y": y_title, "color": color_label}, title=html.escape(title, quote=False),
                    **kw)
    fig.update_xaxes(tickangle=-60, type="category")
    fig.update_yaxes(type="category")
    return fig
