"""Book tooling: vendor the browser assets, check and regenerate paired chapter notebooks.

    python tools/book.py vendor               copy MathJax, RequireJS and the widget manager from node_modules
    python tools/book.py check                every book/*.md and its .ipynb hold the same cells (exit 1 if not)
    python tools/book.py execute book/01_temperature.md [...]
                                              regenerate each .ipynb from its .md with fresh outputs
    python tools/book.py prose book/01_temperature.md [...]
                                              copy edited prose (markdown cells) into the .ipynb, keeping its
                                              outputs; refuses when any code cell differs (then: execute)
    python tools/book.py format [--check] [book/01_temperature.md ...]
                                              format every code cell of the .md sources with black (88 columns);
                                              --check: change nothing, list cells that would change or stay too wide
    python tools/book.py test-config OUT.yml  write a copy of _config.yml that builds from committed outputs
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ASSETS = ROOT / "_build" / "book-assets" / "vendor"
sys.path.insert(0, str(ROOT / "lib"))
from llmbook.colab import setup_cell_source  # noqa: E402
from llmbook.device import use_reference_cpu_kernels  # noqa: E402

CHAPTER_TIMEOUT_S = 600


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def vendor() -> None:
    """Copy the three browser dependencies out of node_modules into the book's extra path."""
    modules = ROOT / "node_modules"
    if not (modules / "mathjax").is_dir():
        sys.exit("node_modules is missing: run `npm ci` at the repository root (needs Node.js and npm)")
    if ASSETS.exists():
        shutil.rmtree(ASSETS)
    ASSETS.mkdir(parents=True)
    # MathJax loads fonts and TeX extensions relative to its own script; the speech engine (sre) is not used.
    shutil.copytree(modules / "mathjax" / "es5", ASSETS / "mathjax", ignore=shutil.ignore_patterns("sre", "*.map"))
    shutil.copy(modules / "requirejs" / "require.js", ASSETS / "require.min.js")
    # embed-amd.js loads its icon fonts from its own folder, so the whole dist (less source maps) goes.
    shutil.copytree(
        modules / "@jupyter-widgets" / "html-manager" / "dist",
        ASSETS / "html-manager",
        ignore=shutil.ignore_patterns("*.map", "embed.js", "libembed-amd.js"),
    )
    print(f"vendored browser assets into {ASSETS.relative_to(ROOT)}")


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def check() -> list[str]:
    """Problems found: unpaired files, cells that differ, a wrong Colab set-up cell."""
    problems = []
    expected_setup = setup_cell_source(repository_url())
    for md in sorted(BOOK.glob("*.md")):
        ipynb = md.with_suffix(".ipynb")
        if not ipynb.exists():
            problems.append(f"{md.name}: no paired {ipynb.name}; run `python tools/book.py execute {md.relative_to(ROOT)}`")
            continue
        text_cells = _cells(jupytext.read(md))
        nb_cells = _cells(nbformat.read(ipynb, as_version=4))
        if text_cells != nb_cells:
            first = next((i for i, (a, b) in enumerate(zip(text_cells, nb_cells)) if a != b), min(len(text_cells), len(nb_cells)))
            problems.append(f"{md.name} and {ipynb.name} differ from cell {first}; regenerate with `python tools/book.py execute {md.relative_to(ROOT)}`")
        code = [source for kind, source in text_cells if kind == "code"]
        if not code or code[0] != expected_setup:
            problems.append(f"{md.name}: the first code cell must be the Colab set-up cell from llmbook.colab.setup_cell_source")
    for ipynb in sorted(BOOK.glob("*.ipynb")):
        if not ipynb.with_suffix(".md").exists():
            problems.append(f"{ipynb.name}: no paired .md source")
    return problems


def execute(paths: list[str]) -> None:
    """Re-create each chapter's .ipynb from its .md, executed top to bottom with widget state saved."""
    use_reference_cpu_kernels()  # each kernel inherits them: outputs nbval can reproduce
    for name in paths:
        md = (ROOT / name).resolve() if not Path(name).is_absolute() else Path(name)
        if md.suffix != ".md" or not md.exists():
            sys.exit(f"{name}: expected an existing book/*.md chapter source")
        nb = jupytext.read(md)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,md:myst"
        print(f"executing {md.relative_to(ROOT)} ...", flush=True)
        client = NotebookClient(nb, timeout=CHAPTER_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(md.parent)}}, store_widget_state=True)
        client.execute()
        for cell in nb.cells:  # timings and ids churn the diff without telling a reader anything
            cell.metadata.pop("execution", None)
        nbformat.write(nb, md.with_suffix(".ipynb"))
        print(f"wrote {md.with_suffix('.ipynb').relative_to(ROOT)}")


def prose(paths: list[str]) -> None:
    """Copy each chapter's markdown cells from its .md into its .ipynb, outputs kept.

    Only for prose edits: the code cells, their order and their number must be the same in
    both files, so every output still comes from the code beside it.
    """
    for name in paths:
        md = (ROOT / name).resolve() if not Path(name).is_absolute() else Path(name)
        ipynb = md.with_suffix(".ipynb")
        if md.suffix != ".md" or not md.exists() or not ipynb.exists():
            sys.exit(f"{name}: expected an existing book/*.md chapter source with its .ipynb")
        text, nb = jupytext.read(md), nbformat.read(ipynb, as_version=4)
        kinds = ([c.cell_type for c in text.cells], [c.cell_type for c in nb.cells])
        code = ([c.source.strip() for c in text.cells if c.cell_type == "code"],
                [c.source.strip() for c in nb.cells if c.cell_type == "code"])
        if kinds[0] != kinds[1] or code[0] != code[1]:
            sys.exit(f"{name}: code cells differ from {ipynb.name}; run `python tools/book.py execute {name}`")
        changed = 0
        for mine, theirs in zip(text.cells, nb.cells):
            if mine.cell_type == "markdown" and mine.source != theirs.source:
                theirs.source = mine.source
                changed += 1
        nbformat.write(nb, ipynb)
        print(f"{ipynb.relative_to(ROOT)}: {changed} markdown cell(s) updated")


LINE_LENGTH = 88
_CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(?P<options>(?:---\n.*?\n---\n)|(?::[^\n]*\n)*)(?P<code>.*?)^```$", re.S | re.M)


def _format_code(code: str) -> str:
    import black

    if any(line.lstrip().startswith(("%", "!")) for line in code.splitlines()):
        return code  # IPython magics are not Python; black would refuse them
    return black.format_str(code, mode=black.Mode(line_length=LINE_LENGTH))


def format_chapters(paths: list[str], check_only: bool) -> list[str]:
    """Format each chapter source's code cells with black; return the problems left.

    Black does not split long strings or comments: a line it leaves wider than 88 columns
    is reported for a hand edit.
    """
    problems = []
    sources = [(ROOT / p).resolve() for p in paths] if paths else sorted(BOOK.glob("*.md"))
    for md in sources:
        text = md.read_text()

        def reformat(match: re.Match) -> str:
            code = match.group("code")
            # ":tags: [...]" options are separated from the code by one blank line.
            blank = "\n" if code.startswith("\n") else ""
            opening = match.group(0)[: match.start("code") - match.start(0)]
            return opening + blank + _format_code(code[len(blank):]) + "```"

        new = _CODE_CELL.sub(reformat, text)
        name = md.relative_to(ROOT)
        if new != text:
            if check_only:
                problems.append(f"{name}: code cells are not black-formatted; run `python tools/book.py format {name}`")
            else:
                md.write_text(new)
                print(f"formatted {name}")
        for number, line in enumerate(new.splitlines(), 1):
            if len(line) > LINE_LENGTH and _inside_code(new, number):
                problems.append(f"{name}:{number}: {len(line)} columns (at most {LINE_LENGTH})")
    return problems


def _inside_code(text: str, line_number: int) -> bool:
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```{code-cell}"):
            inside = True
        elif line == "```":
            inside = False
        if number == line_number:
            return inside
    return False


def test_config(out: str) -> None:
    """Write a copy of _config.yml that renders the committed outputs instead of re-executing."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    # Paths in the copy would resolve against its own folder: make them absolute.
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx["local_extensions"].items()}
    sphinx["config"]["html_extra_path"] = [str(ROOT / path) for path in sphinx["config"]["html_extra_path"]]
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("vendor")
    sub.add_parser("check")
    run = sub.add_parser("execute")
    run.add_argument("chapters", nargs="+")
    edit = sub.add_parser("prose")
    edit.add_argument("chapters", nargs="+")
    fmt = sub.add_parser("format")
    fmt.add_argument("--check", action="store_true")
    fmt.add_argument("chapters", nargs="*")
    cfg = sub.add_parser("test-config")
    cfg.add_argument("out")
    args = parser.parse_args()
    if args.command == "vendor":
        vendor()
    elif args.command == "check":
        problems = check()
        print("\n".join(problems) or "every chapter's .md and .ipynb are in sync")
        sys.exit(1 if problems else 0)
    elif args.command == "execute":
        execute(args.chapters)
    elif args.command == "prose":
        prose(args.chapters)
    elif args.command == "format":
        problems = format_chapters(args.chapters, args.check)
        print("\n".join(problems) or "every code cell is formatted and at most 88 columns wide")
        sys.exit(1 if problems else 0)
    else:
        test_config(args.out)


if __name__ == "__main__":
    main()
