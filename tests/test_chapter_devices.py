"""Chapters put model inputs on the model's device, so they run on a GPU (Colab) as on this CPU.

On a CPU-only machine a tensor made without ``device=`` and a model both sit on the CPU, so
nbval cannot see the mistake; on a GPU the model refuses the input. This check reads each
chapter's code: a model (a name bound from ``load(...)``) called on a tensor built in place
(``torch.tensor``, ``torch.as_tensor``, ``torch.zeros``, ...) must give that tensor a device.
"""

from __future__ import annotations

import ast

import jupytext
import pytest

from conftest import BOOK

SOURCES = sorted(BOOK.glob("*.md"))
BUILDERS = {"tensor", "as_tensor", "zeros", "ones", "full", "arange", "empty", "randint", "stack", "cat"}


def _code(path) -> ast.Module:
    cells = [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]
    return ast.parse("\n\n".join(cells))


def _model_names(tree: ast.Module) -> set[str]:
    """Names bound to the first value of ``load(...)``: ``model, tok = load(...)``, ``m = load(...)[0]``."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        value = node.value
        call = value.value if isinstance(value, ast.Subscript) else value
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) == "load"):
            continue
        for target in node.targets:
            first = target.elts[0] if isinstance(target, ast.Tuple) else target
            if isinstance(first, ast.Name):
                names.add(first.id)
    return names


def _builds_without_device(node: ast.AST) -> bool:
    for inner in ast.walk(node):
        if (
            isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and inner.func.attr in BUILDERS
            and getattr(inner.func.value, "id", None) == "torch"
            and not any(k.arg == "device" for k in inner.keywords)
        ):
            return True
    return False


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_model_inputs_are_built_on_the_models_device(path):
    tree = _code(path)
    models = _model_names(tree)
    offenders = [
        f"line {node.lineno} of the chapter's code: {ast.unparse(node)[:80]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in models
        and any(_builds_without_device(arg) for arg in node.args)
    ]
    assert not offenders, f"{path.name}: pass device=<model>.device to these inputs: {offenders}"


def test_the_check_sees_the_mistake():
    tree = ast.parse("model, tok = load('x')\nmodel(torch.tensor([ids]))\nmodel(torch.tensor([ids], device=model.device))")
    assert _model_names(tree) == {"model"}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "model"]
    assert [_builds_without_device(c.args[0]) for c in calls] == [True, False]
