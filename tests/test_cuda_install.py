"""The `cuda` extra installs a torch that the pinned xformers was built for."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from txblocks.doctor import xformers_build

ROOT = Path(__file__).parents[1]


def _extra(name: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["optional-dependencies"][name]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", requirement)
        assert match, f"the {name} extra must pin exact versions: {requirement!r}"
        pins[match[1].lower()] = match[2]
    return pins


def test_cuda_extra_pins_the_torch_its_xformers_was_built_for():
    pins = _extra("cuda")
    assert set(pins) == {"xformers", "torch"}
    if importlib.metadata.version("xformers") != pins["xformers"]:
        pytest.skip("the installed xformers is not the pinned one: nothing to read its build from")
    built = xformers_build()
    assert built is not None, "xformers ships no cpp_lib.json"
    torch_built = built["torch"].split("+")[0]  # 2.10.0+cu128 -> 2.10.0
    assert re.fullmatch(pins["torch"].replace(".", r"\.").replace("*", r"\d+"), torch_built), (
        f"xformers {pins['xformers']} was built for torch {built['torch']}, the extra pins "
        f"torch=={pins['torch']}")


def test_makefile_install_cuda_uses_the_same_pins():
    pins = _extra("cuda")
    recipe = (ROOT / "Makefile").read_text().split("install-cuda:")[1].split("\n\n")[0]
    for name, version in pins.items():
        assert f"{name}=={version}" in recipe, recipe
