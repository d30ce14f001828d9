"""Shared fixtures: the book built once per test session, and a report of what was skipped from comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property-based tests explore the same examples on every run and machine (reproducible
# failures, no flaky CI), and never fail on timing: speed lives in benchmarks/.
settings.register_profile("book", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("book")

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
TEST_BUILD = ROOT / "_build" / "test"
_REPORT: dict[str, list[str]] = {}


def report(section: str, line: str) -> None:
    """Add a line to the summary printed at the end of the test run."""
    _REPORT.setdefault(section, []).append(line)


def pytest_terminal_summary(terminalreporter):  # noqa: D103
    for section, lines in _REPORT.items():
        terminalreporter.write_sep("-", section)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book with warnings as errors from the committed notebook outputs; return the HTML folder.

    The chapters are not re-executed here: nbval re-executes every chapter and compares its
    outputs with the committed ones in the same test run, so rendering those outputs tests
    the same pages the book command publishes, in half the time.
    """
    config = TEST_BUILD / "_config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "book.py"), "test-config", str(config)], check=True)
    if not (ROOT / "_build" / "book-assets" / "vendor" / "mathjax").is_dir():
        subprocess.run([sys.executable, str(ROOT / "tools" / "book.py"), "vendor"], check=True)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--all", "-W", "--keep-going", "--config", str(config), "--path-output", str(TEST_BUILD)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"the book build failed (warnings are errors):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return TEST_BUILD / "_build" / "html"
