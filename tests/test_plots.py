import matplotlib.pyplot as plt
import pytest

from llmbook.plots import BOOK_STYLE, PALETTE, book_style, figure_png


def test_style_is_opaque_and_colour_blind_safe():
    with book_style():
        fig, ax = plt.subplots()
        line, = ax.plot([0, 1])
        assert fig.get_facecolor() == (1.0, 1.0, 1.0, 1.0)  # readable on light and dark pages
        assert line.get_color() == PALETTE[0]
        png = figure_png(fig)
    assert png.startswith(b"\x89PNG") and BOOK_STYLE["savefig.facecolor"] == "white"
    assert not plt.get_fignums(), "figure_png closes the figure it renders"


def test_png_bytes_are_reproducible():
    def render():
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        return figure_png(fig)

    assert render() == render()


def test_bad_dpi():
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="dpi"):
        figure_png(fig, dpi=5)
    plt.close(fig)
