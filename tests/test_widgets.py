import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
from IPython.display import HTML

from llmbook.widgets import MAX_FRAMES, PrecomputedWidget, precomputed


def line(a, b=1.0):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, a * b])
    return fig


def links_of(widget):
    return widget.links


def test_one_parameter_frames_and_links():
    w = precomputed(line, {"a": [1, 2, 3]}, initial={"a": 2})
    assert isinstance(w, PrecomputedWidget)
    slider, stack = w.children
    assert slider.index == 1 and stack.selected_index == 1
    assert len(stack.children) == 3 and all(isinstance(c, widgets.Image) for c in stack.children)
    assert len({c.value for c in stack.children}) == 3  # different outputs, not one frame repeated
    linked = [l for l in links_of(w) if l.source[0] is slider]
    assert [l.target[0] for l in linked] == [stack] and linked[0].source[1] == "index"
    assert w.nbytes == sum(len(c.value) for c in stack.children)


def test_two_parameters_nest_stacks_and_link_every_level():
    w = precomputed(line, {"a": [1, 2], "b": [0.5, 1.0, 2.0]})
    s1, s2, outer = w.children
    assert len(outer.children) == 2 and all(len(inner.children) == 3 for inner in outer.children)
    targets = {id(l.target[0]) for l in links_of(w) if l.source[0] is s2}
    assert targets == {id(inner) for inner in outer.children}
    # frame order: outer index = a, inner index = b
    assert outer.children[1].children[2].value == w.frames[1 * 3 + 2].data


def test_text_and_html_frames():
    w = precomputed(lambda n: "<b>" * n if n else HTML(f"<i>{n}</i>"), {"n": [0, 1]})
    stack = w.children[-1]
    assert stack.children[0].value == "<i>0</i>"
    assert stack.children[1].value == '<pre class="llmbook-text">&lt;b&gt;</pre>'
    assert repr(w) == "PrecomputedWidget(n=['0', '1']; 2 frames)"


@pytest.mark.parametrize(
    "grids, message",
    [
        ({}, "non-empty mapping"),
        ({"a": []}, "empty"),
        ({"a": [1.0, float("nan")]}, "non-finite"),
        ({"a": [1, 1]}, "repeated"),
        ({"a": "abc"}, "sequence"),
        ({"not a name": [1]}, "identifiers"),
        ({"a": list(range(20)), "b": list(range(20))}, "400 frames"),
    ],
)
def test_bad_grids(grids, message):
    with pytest.raises(ValueError, match=message):
        precomputed(line, grids)


def test_page_weight_is_capped():
    with pytest.raises(ValueError, match="max_bytes"):
        precomputed(line, {"a": [1, 2]}, max_bytes=1000)


def test_bad_options():
    with pytest.raises(ValueError, match="max_frames"):
        precomputed(line, {"a": [1]}, max_frames=MAX_FRAMES + 1)
    with pytest.raises(ValueError, match="initial value"):
        precomputed(line, {"a": [1]}, initial={"a": 5})
    with pytest.raises(ValueError, match="render must return"):
        precomputed(lambda a: 42, {"a": [1]})


def png_size(data: bytes) -> tuple[int, int]:
    # PNG: the IHDR chunk holds width and height as big-endian 32-bit integers at bytes 16-24.
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_numbers_get_a_slider_and_names_a_dropdown():
    w = precomputed(lambda name, a: line(a), {"name": ["cat", "dog"], "a": [1, 2]})
    name_control, a_control, _ = w.children
    assert isinstance(name_control, widgets.Dropdown) and name_control.index == 0
    assert isinstance(a_control, widgets.SelectionSlider)
    assert [label for label, _ in name_control.options] == ["cat", "dog"]


def test_figure_frames_share_one_size_at_twice_the_displayed_resolution():
    def labelled(a):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [0, a])
        ax.set_ylabel("a label" * a)  # longer labels would change a tight bounding box
        return fig

    from llmbook.plots import book_style

    with book_style():  # the book's style crops saved figures ("tight"): frames must not be
        w = precomputed(labelled, {"a": [1, 4]}, dpi=50)
    sizes = {png_size(frame.data) for frame in w.frames}
    assert sizes == {(200, 150)}  # 2 x 1.5 inches at 2 x 50 dpi
    assert {frame.width for frame in w.frames} == {100}
    assert w.children[-1].children[0].layout.width == "100px"


def test_text_frames_are_padded_to_one_height():
    w = precomputed(lambda n: "line\n" * n, {"n": [1, 3]})
    assert {frame.data.count("\n") for frame in w.frames} == {3}
