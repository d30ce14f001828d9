"""One figure style for the whole book.

Figures get an opaque white background and a colour-blind-safe palette (Okabe & Ito),
so the same PNG reads well on the book's light and dark themes, in Colab and on paper.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import matplotlib

# Compute never imports this module; chapters do. The Agg backend renders without a display
# (CI, the book build); Jupyter's inline backend still takes over inside a notebook.
if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline", "inline"}:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

#: Okabe & Ito's palette: distinguishable with the common forms of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

BOOK_STYLE: dict[str, object] = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.bbox": "tight",
    "axes.facecolor": "white",
    "axes.edgecolor": "#333333",
    "axes.labelcolor": "#222222",
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)),
    "lines.linewidth": 2.0,
    "font.size": 10,
    "xtick.color": "#333333",
    "ytick.color": "#333333",
    "legend.frameon": False,
    # Stable PNG/SVG bytes across runs, so re-running a chapter does not churn the notebook.
    "svg.hashsalt": "llmbook",
    "path.simplify": True,
}


def use_book_style() -> None:
    """Apply the book's style to every figure created afterwards.

    Inside Jupyter, figures are also stored as 2x ("retina") PNGs shown at their nominal
    size, so they stay sharp on high-DPI screens and phones.
    """
    plt.rcParams.update(BOOK_STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python: no inline backend to configure
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


@contextlib.contextmanager
def book_style() -> Iterator[None]:
    """Context manager form of :func:`use_book_style` that restores the previous style."""
    with plt.rc_context(BOOK_STYLE):
        yield


def figure_png(fig: "plt.Figure", dpi: int = 80, *, tight: bool = True) -> bytes:
    """Render ``fig`` to compact PNG bytes (no timestamp metadata, optimised) and close it.

    ``tight=False`` keeps the figure's own canvas size (``figsize`` x ``dpi`` pixels)
    instead of cropping to its contents, so frames of one widget share a size.
    """
    if not 20 <= dpi <= 300:
        raise ValueError(f"dpi must be in [20, 300], got {dpi}")
    buffer = io.BytesIO()
    # bbox_inches=None would fall back to rcParams["savefig.bbox"] ("tight" in the book's
    # style): the whole canvas is asked for through the rc setting itself.
    with plt.rc_context({"savefig.bbox": "tight" if tight else "standard"}):
        fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, pil_kwargs={"optimize": True})
    plt.close(fig)
    return buffer.getvalue()
