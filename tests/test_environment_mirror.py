"""environment.yml mirrors pyproject.toml's dependencies, and both install paths use the same exact versions."""

import re
import tomllib

import yaml

from conftest import ROOT


def _pip_section() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def test_environment_yml_lists_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    requirements = {line for line in _pip_section() if not line.startswith("-")}
    assert requirements == wanted


def test_both_install_paths_use_the_constraints_file():
    assert "-c constraints.txt" in _pip_section()
    assert "-c constraints.txt" in (ROOT / "scripts" / "_setup.sh").read_text()


def _pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_every_dependency_exactly():
    pins = _pinned()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ]", requirement)[0]).lower()
        if name == "torch":  # installed by the setup script (CPU wheel) or by the reader (CUDA)
            continue
        assert name in pins, f"constraints.txt does not pin {name}"

