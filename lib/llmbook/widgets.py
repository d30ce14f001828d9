"""Widgets that stay live in the static HTML book, with no kernel behind them.

A plain ``ipywidgets.interact`` calls Python when the slider moves; in the published book
there is no Python, so the slider would do nothing. :func:`precomputed` instead renders
the output for *every* point of a finite grid up front and stacks the frames in
``ipywidgets.Stack`` containers. Each slider's ``index`` is linked to the stacks'
``selected_index`` with ``jslink``, a link that lives in the browser, so moving the slider
flips frames in Jupyter, in Colab and in the saved HTML alike.

Several parameters nest the stacks: the first control picks a child of the outer stack,
the second a child of each stack one level down, and so on. A grid of numbers gets a
slider; a grid of anything else (names, contexts) gets a dropdown, since its values have
no order to slide along.

Every frame of a widget has the same size, so the page does not jump while a control
moves: figures are drawn at a fixed size (constrained layout, no tight bounding box) and
at twice their displayed resolution for high-DPI screens; text frames are padded to the
same number of lines.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import ipywidgets as widgets

#: More frames than this make a page heavy and a slider hard to use; split the grid instead.
MAX_FRAMES = 240
#: Default cap on a widget's embedded bytes (frames as PNG/HTML), about a few figures' worth each.
MAX_BYTES = 4_000_000


@dataclass(frozen=True)
class Frame:
    """One rendered output: ``kind`` is ``'png'`` or ``'html'``; ``data`` its bytes or markup.

    ``width`` is the CSS width in pixels a PNG is shown at (its pixels are twice that).
    """

    kind: str
    data: bytes | str
    width: int | None = None

    @property
    def nbytes(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else len(self.data.encode())


def to_frame(output: Any, dpi: int = 80) -> Frame:
    """Turn what a render function returned into a :class:`Frame`.

    Accepted: a matplotlib ``Figure`` (rendered to PNG and closed), an object with
    ``_repr_html_`` (e.g. ``IPython.display.HTML``), a pandas-free ``str`` (shown as
    preformatted text, HTML-escaped).
    """
    from matplotlib.figure import Figure

    from llmbook.plots import figure_png

    if isinstance(output, Figure):
        # A fixed canvas: every frame of a widget has the figure's own size, whatever its
        # labels, so the page does not jump; constrained layout keeps labels inside it.
        if output.get_layout_engine() is None:
            output.set_layout_engine("constrained")
        width = round(output.get_figwidth() * dpi)
        return Frame("png", figure_png(output, dpi=2 * dpi, tight=False), width=width)
    if hasattr(output, "_repr_html_"):
        markup = output._repr_html_()
        if not isinstance(markup, str):
            raise ValueError(f"render returned an object whose _repr_html_() gave {type(markup).__name__}, not str")
        return Frame("html", markup)
    if isinstance(output, str):
        return Frame("html", f'<pre class="llmbook-text">{html.escape(output)}</pre>')
    raise ValueError(
        "render must return a matplotlib Figure, an object with _repr_html_, or a str; "
        f"got {type(output).__name__}"
    )


def _check_grids(grids: Mapping[str, Sequence[Any]], max_frames: int) -> dict[str, list[Any]]:
    if not isinstance(grids, Mapping) or not grids:
        raise ValueError("grids must be a non-empty mapping of parameter name -> sequence of values")
    if not isinstance(max_frames, int) or not 1 <= max_frames <= MAX_FRAMES:
        raise ValueError(f"max_frames must be an int in [1, {MAX_FRAMES}], got {max_frames!r}")
    checked: dict[str, list[Any]] = {}
    for name, values in grids.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"grid names must be Python identifiers (they become keyword arguments), got {name!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"grid {name!r} must be a sequence of values, got {type(values).__name__}")
        values = list(values)
        if not values:
            raise ValueError(f"grid {name!r} is empty; give it at least one value")
        for value in values:
            if isinstance(value, Real) and not math.isfinite(float(value)):
                raise ValueError(f"grid {name!r} contains a non-finite value {value!r}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"grid {name!r} contains repeated values")
        checked[name] = values
    frames = math.prod(len(v) for v in checked.values())
    if frames > max_frames:
        sizes = " x ".join(f"{len(v)} ({k})" for k, v in checked.items())
        raise ValueError(f"the grids give {frames} frames ({sizes}); max_frames is {max_frames}: use coarser grids")
    return checked


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


Control = widgets.SelectionSlider | widgets.Dropdown


class PrecomputedWidget(widgets.VBox):
    """A VBox of controls over a nest of stacks of precomputed frames (see :func:`precomputed`)."""

    def __init__(self, controls: list[Control], body: widgets.Widget, frames: list[Frame], links: list[widgets.Link]):
        super().__init__(children=[*controls, body])
        self.controls = controls
        self.frames = frames
        self.links = links  # browser-side slider -> stack links; kept so they are not garbage-collected
        self.add_class("llmbook-precomputed")

    def __repr__(self) -> str:
        # Short and free of image bytes: this is the text nbval compares and a notebook stores.
        grids = ", ".join(f"{c.description}={[label for label, _ in c.options]}" for c in self.controls)
        return f"PrecomputedWidget({grids}; {len(self.frames)} frames)"

    @property
    def nbytes(self) -> int:
        """Bytes the frames add to the page (PNG bytes and HTML markup, before base64)."""
        return sum(frame.nbytes for frame in self.frames)


def _frame_widget(frame: Frame) -> widgets.Widget:
    if frame.kind == "png":
        layout = widgets.Layout(width=f"{frame.width}px", max_width="100%", height="auto")
        return widgets.Image(value=frame.data, format="png", layout=layout)
    return widgets.HTML(value=frame.data)


def precomputed(
    render: Callable[..., Any],
    grids: Mapping[str, Sequence[Any]],
    *,
    initial: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    dpi: int = 80,
    max_frames: int = 120,
    max_bytes: int = MAX_BYTES,
) -> PrecomputedWidget:
    """Render ``render(**point)`` at every point of ``grids`` and return a widget over the frames.

    Args:
        render: called once per grid point with one keyword per grid; returns a matplotlib
            Figure, HTML (``_repr_html_``) or text.
        grids: parameter name -> finite list of values, e.g. ``{"temperature": [0.1, 0.5, 1.0]}``.
        initial: starting value per parameter (default: each grid's first value).
        labels: control label per parameter (default: the parameter name).
        dpi: displayed resolution of figure frames (their PNGs hold twice as many pixels
            per inch, for high-DPI screens); lower is lighter.
        max_frames: refuse grids with more points than this (at most ``MAX_FRAMES``).
        max_bytes: refuse a widget whose frames weigh more than this (they are embedded in the page).
    """
    grids = _check_grids(grids, max_frames)
    names = list(grids)
    initial = dict(initial or {})
    for name, value in initial.items():
        if name not in grids:
            raise ValueError(f"initial names unknown parameter {name!r}; parameters are {names}")
        if value not in grids[name]:
            raise ValueError(f"initial value {value!r} for {name!r} is not in its grid {grids[name]}")
    labels = dict(labels or {})
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")

    outputs = [render(**dict(zip(names, point))) for point in itertools.product(*(grids[n] for n in names))]
    if all(isinstance(output, str) for output in outputs):
        # Text frames padded to the same number of lines: the widget keeps one height.
        lines = max(output.count("\n") for output in outputs)
        outputs = [output + "\n" * (lines - output.count("\n")) for output in outputs]
    frames = [to_frame(output, dpi=dpi) for output in outputs]
    total = sum(frame.nbytes for frame in frames)
    if total > max_bytes:
        raise ValueError(
            f"the {len(frames)} frames weigh {total:,} bytes, over max_bytes={max_bytes:,}: "
            "use fewer grid points, a lower dpi or smaller figures"
        )

    start = [grids[n].index(initial.get(n, grids[n][0])) for n in names]
    controls = [_control(grids[n], start[depth], labels.get(n, n)) for depth, n in enumerate(names)]

    # Build the nest bottom-up; stacks_at[d] holds every stack that slider d drives.
    stacks_at: list[list[widgets.Stack]] = [[] for _ in names]
    leaves = iter(_frame_widget(f) for f in frames)

    def build(depth: int) -> widgets.Widget:
        if depth == len(names):
            return next(leaves)
        stack = widgets.Stack(children=[build(depth + 1) for _ in grids[names[depth]]], selected_index=start[depth])
        stacks_at[depth].append(stack)
        return stack

    body = build(0)
    links = [
        widgets.jslink((control, "index"), (stack, "selected_index"))
        for control, stacks in zip(controls, stacks_at)
        for stack in stacks
    ]
    return PrecomputedWidget(controls, body, frames, links)


def _control(values: list[Any], index: int, label: str) -> Control:
    """A slider over a grid of numbers; a dropdown over any other grid (no order to slide along)."""
    options = [(_format_value(v), i) for i, v in enumerate(values)]
    common = dict(options=options, index=index, description=label, style={"description_width": "initial"})
    if all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        return widgets.SelectionSlider(continuous_update=True, layout=widgets.Layout(width="min(100%, 32rem)"), **common)
    return widgets.Dropdown(layout=widgets.Layout(width="min(100%, 32rem)"), **common)
