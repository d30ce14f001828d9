"""The chapters as files: paired .md/.ipynb in sync, the Colab cell, formatted code, figures
a reader can read, no test plumbing on the page, and prose numbers that come from the run."""

from __future__ import annotations

import re
import subprocess
import sys

import jupytext
import nbformat
import pytest
import yaml

from conftest import BOOK, ROOT, report

CHAPTERS = sorted(BOOK.glob("*.ipynb"))
SOURCES = sorted(BOOK.glob("*.md"))
#: Numbered chapters (not the preface, not the appendix) end with takeaways and exercises.
NUMBERED = [p for p in SOURCES if re.match(r"0[1-9]|[1-8]\d", p.stem)]
#: nbval compares every output except these; each exempt cell must say why in its metadata.
MAX_IGNORED_PER_CHAPTER = 3
IGNORE_TAG = "nbval-ignore-output"
WHY_KEY = "nbval-ignore-output-why"
HIDDEN_INPUT = {"hide-input", "hide-cell", "remove-input", "remove-cell"}


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "book.py"), *args], capture_output=True, text=True)


def test_every_chapter_is_paired_and_in_sync():
    result = _tool("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_chapter_code_is_black_formatted_within_88_columns():
    result = _tool("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_toc_lists_every_chapter_once():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    notebooks = [f for f in files if f.endswith(".ipynb")]
    assert sorted(notebooks) == sorted(f"book/{p.name}" for p in CHAPTERS)
    assert len(files) == len(set(files))
    for page in files:
        assert (ROOT / page).exists() or (ROOT / f"{page}.md").exists(), page


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_ignored_outputs_are_few_tagged_and_explained(path):
    nb = nbformat.read(path, as_version=4)
    ignored = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert "NBVAL_IGNORE_OUTPUT" not in cell.source, (
            f"{path.name} cell {index}: use the cell tag {IGNORE_TAG!r}, not a comment a reader sees"
        )
        if IGNORE_TAG in cell.metadata.get("tags", []):
            why = cell.metadata.get(WHY_KEY, "")
            assert why.strip(), f"{path.name} cell {index}: say why in the cell metadata {WHY_KEY!r}"
            ignored.append(why.strip())
    code_cells = sum(cell.cell_type == "code" for cell in nb.cells)
    report(
        "nbval: outputs not compared, per chapter",
        f"{path.stem}: {len(ignored)} of {code_cells} code cells" + (f" ({'; '.join(ignored)})" if ignored else ""),
    )
    assert len(ignored) <= MAX_IGNORED_PER_CHAPTER


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_has_a_caption_alt_text_and_folded_code(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not any("image/png" in o.get("data", {}) for o in cell.outputs):
            continue
        where = f"{path.name} cell {index}"
        mystnb = cell.metadata.get("mystnb", {})
        assert mystnb.get("figure", {}).get("caption", "").strip(), f"{where}: give the figure a caption (mystnb.figure.caption)"
        alt = mystnb.get("image", {}).get("alt", "")
        assert len(alt.split()) >= 5, f"{where}: describe the figure in its alt text (mystnb.image.alt)"
        assert HIDDEN_INPUT & set(cell.metadata.get("tags", [])), f"{where}: fold the plotting code (tag hide-input)"
        for output in cell.outputs:
            if "image/png" in output.get("data", {}):
                # matplotlib_inline's 'retina' format: 2x pixels, shown at half their size.
                assert "width" in output.get("metadata", {}).get("image/png", {}), f"{where}: a 1x PNG (use_book_style sets 2x)"


#: A measured number typed into prose: a percentage or a decimal with two or more places,
#: outside math ($...$), code (`...`) and glued values ({glue:...}`...`).
HAND_TYPED = re.compile(r"\d[\d,]*(?:\.\d+)?\s?%|\b\d+\.\d{2,}\b")


def _prose_without_computed_parts(text: str) -> str:
    text = re.sub(r"\{glue:[a-z]+\}`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", " ", text, flags=re.S)
    text = re.sub(r"```.*?```|`[^`\n]*`", " ", text, flags=re.S)
    return re.sub(r"\{cite:[a-z]+\}`[^`]*`|\]\([^)]*\)", " ", text)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_prose_numbers_come_from_the_run(path):
    typed = []
    for cell in jupytext.read(path).cells:
        if cell.cell_type == "markdown":
            typed += HAND_TYPED.findall(_prose_without_computed_parts(cell.source))
    assert not typed, f"{path.name}: glue these into the prose instead of typing them: {typed}"


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.stem)
def test_chapter_ends_with_takeaways_and_exercises(path):
    text = path.read_text()
    assert re.search(r"^## Key takeaways", text, re.M), f"{path.name}: no '## Key takeaways' section"
    exercises = re.findall(r"^:{3,}\{exercise\}", text, re.M)
    solutions = re.findall(r"^:{3,}\{solution\}[^\n]*\n:class: dropdown", text, re.M)
    assert 3 <= len(exercises) <= 5, f"{path.name}: {len(exercises)} exercises (3 to 5)"
    assert len(solutions) == len(exercises), f"{path.name}: every exercise needs a solution with :class: dropdown"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_committed_outputs_are_complete(path):
    """Every code cell was executed in order and none of them raised."""
    nb = nbformat.read(path, as_version=4)
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: regenerate with tools/book.py execute"
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
