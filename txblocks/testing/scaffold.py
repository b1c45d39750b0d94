"""``txblocks new-plugin NAME``: write a new plugin distribution from the template.

The template is the string table :data:`TEMPLATE` below; ``plugins/template/`` in
txblocks' repository is this table rendered for the name ``template`` (a test keeps
the two equal). Placeholders: ``{{dist}}`` (``txblocks-NAME``), ``{{package}}``
(``txblocks_NAME``) and ``{{name}}`` (the entry-point name, ``NAME`` with ``_``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

__all__ = ["TEMPLATE", "new_plugin", "render", "run_new_plugin"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

TEMPLATE: dict[str, str] = {}

TEMPLATE["pyproject.toml"] = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{{dist}}"
version = "0.1.0"
description = "A txblocks plugin: ScaleNorm (Nguyen & Salazar 2019) as the norm 'scalenorm'."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["txblocks"]

[project.optional-dependencies]
test = ["pytest>=8"]

# What makes this a txblocks plugin: txblocks imports every module named in the
# `txblocks` entry-point group and calls its txblocks_register hook.
[project.entry-points.txblocks]
{{name}} = "{{package}}.plugin"

[tool.setuptools.packages.find]
include = ["{{package}}*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

TEMPLATE["README.md"] = '''\
# {{dist}}

A txblocks plugin: ScaleNorm (Nguyen & Salazar 2019, "Transformers without Tears") as
the norm `scalenorm`.

```bash
pip install {{dist}}
txblocks list norm          # scalenorm, owned by {{dist}}
```

```yaml
block:
  norm: {type: scalenorm, eps: 1.0e-6}
```

## Develop

```bash
pip install -e '.[test]'
pytest                      # conformance checks, the formula, a spec that builds
```

## Make it yours

1. Rename. `txblocks new-plugin NAME` writes this template as `txblocks-NAME/`, with the
   package `txblocks_NAME` and the entry point `NAME`. By hand: rename the folder
   `{{package}}/`, `name` and the entry point in `pyproject.toml`, and the import in
   `tests/test_plugin.py`.
2. Replace `ScaleNorm` and `ScaleNormConfig` in `{{package}}/plugin.py` with your
   component, and register it under its kind: `registry.add(kind, name, factory,
   config)`. What each kind's factory receives is in txblocks' `docs/plugins.md`.
3. Pick a registered name nobody else uses: two plugins registering the same kind and
   name is an error naming both distributions.
4. Keep `test_conformance`: `txblocks.testing.check_component` runs the checks that
   txblocks' built-in components pass.

## Publish

```bash
pip install build twine
python -m build             # dist/{{package}}-0.1.0-py3-none-any.whl and .tar.gz
twine upload dist/*
```

Anyone who installs the wheel gets the component in every spec, in `txblocks list`
and in the JSON Schema (`txblocks schema`); no import or configuration needed.
'''

TEMPLATE["{{package}}/__init__.py"] = '''\
"""{{dist}}: a txblocks plugin; the components are registered in plugin.py."""
'''

TEMPLATE["{{package}}/plugin.py"] = '''\
"""{{dist}}: ScaleNorm for txblocks, registered as the norm ``scalenorm``.

Nguyen & Salazar 2019, "Transformers without Tears: Improving the Normalization of
Self-Attention", section 2.2: ``ScaleNorm(x) = g * x / ||x||`` with one learned scalar
``g``, initialised to ``sqrt(d)``.
"""

from __future__ import annotations

import math

import torch
import txblocks
from pydantic import Field
from torch import Tensor, nn


class ScaleNormConfig(txblocks.ComponentConfig):
    """ScaleNorm (Nguyen & Salazar 2019): g * x / ||x||, one learned scalar g."""

    eps: float = Field(1e-5, gt=0, description="floor of ||x||, so that a zero vector stays finite")


class ScaleNorm(nn.Module):
    """``g * x / max(||x||, eps)`` over the last dimension; ``g`` starts at ``sqrt(dim)``.

    Args:
        dim: width of the normalized vectors (d_model).
        config: the validated parameters.
    """

    def __init__(self, dim: int, config: ScaleNormConfig) -> None:
        super().__init__()
        self.eps = config.eps
        self.g = nn.Parameter(torch.tensor(math.sqrt(dim)))

    def forward(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., dim)
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


@txblocks.hookimpl
def txblocks_register(registry: txblocks.Registry) -> None:
    """Add this plugin's components; txblocks calls it once per registry it builds."""
    registry.add("norm", "scalenorm", ScaleNorm, ScaleNormConfig)
'''

TEMPLATE["tests/test_plugin.py"] = '''\
"""{{dist}}: txblocks' conformance checks, the formula, and a spec that uses it."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch
import txblocks
from txblocks.testing import check_component

from {{package}} import plugin

SPEC = {
    "arch": "decoder", "vocab_size": 64, "max_seq_len": 32, "d_model": 32, "n_layers": 2,
    "n_heads": 4, "block": {"norm": {"type": "scalenorm", "eps": 1e-6}},
}


@pytest.fixture
def registry() -> txblocks.Registry:
    """txblocks' built-ins and this plugin, registered explicitly (works before install)."""
    return txblocks.load_registry(autoload=False, plugins=[plugin])


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_conformance(registry, eps):
    check_component(registry, "norm", "scalenorm", eps=eps)


def test_formula(registry):
    norm = registry.config("norm", "scalenorm").build(16)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(norm(x), math.sqrt(16) * x / x.norm(dim=-1, keepdim=True))


def test_a_spec_using_it_validates_and_builds(registry):
    spec = txblocks.load_spec(SPEC, registry=registry)
    model = txblocks.build(spec).eval()
    assert type(model.blocks[0].norm1) is plugin.ScaleNorm
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 7, 64) and torch.isfinite(logits).all()


def test_bad_parameters_are_spec_errors(registry):
    bad = {**SPEC, "block": {"norm": {"type": "scalenorm", "eps": 0}}}
    with pytest.raises(txblocks.SpecError, match=r"block\\.norm\\.eps"):
        txblocks.load_spec(bad, registry=registry)


def test_the_entry_point_is_installed():
    if plugin.__name__ not in {ep.value for ep in entry_points(group="txblocks")}:
        pytest.skip("not installed; run `pip install -e .` to test the entry point")
    assert ("norm", "scalenorm") in txblocks.load_registry()
'''


def _names(name: str) -> dict[str, str]:
    """The placeholders for plugin ``name``.

    Raises:
        ValueError: a name that is not lowercase letters, digits, ``-`` and ``_``.
    """
    short = re.sub(r"^txblocks[-_]", "", name)
    if not _NAME.match(short):
        raise ValueError(
            f"invalid plugin name {name!r}: use lowercase letters and digits, words "
            "joined by '-' or '_', starting with a letter (e.g. 'scalenorm', 'my-norms')"
        )
    entry = short.replace("-", "_")
    return {"dist": f"txblocks-{short.replace('_', '-')}", "package": f"txblocks_{entry}",
            "name": entry}  # fmt: skip


def render(name: str) -> dict[str, str]:
    """The template's files for plugin ``name``: relative path -> text.

    Raises:
        ValueError: an invalid name.
    """
    names = _names(name)

    def fill(text: str) -> str:
        for key, value in names.items():
            text = text.replace("{{" + key + "}}", value)
        return text

    return {fill(path): fill(text) for path, text in TEMPLATE.items()}


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write a new plugin distribution ``txblocks-NAME/`` inside ``directory``.

    It holds ``pyproject.toml`` (the ``txblocks`` entry point), ``README.md`` (how to
    rename and publish), ``txblocks_NAME/plugin.py`` (a ScaleNorm to replace with your
    component) and ``tests/test_plugin.py`` (the conformance checks and a spec).

    Args:
        name: the plugin's name (``scalenorm``, ``my-norms``); a ``txblocks-`` prefix
            is accepted and not doubled.
        directory: the folder to create it in.

    Returns:
        The new distribution's folder.

    Raises:
        ValueError: an invalid name.
        FileExistsError: the folder exists and is not empty.

    Example::

        root = new_plugin("my-norms", "~/src")   # ~/src/txblocks-my-norms/
    """
    files = render(name)
    root = Path(directory).expanduser() / _names(name)["dist"]
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} already exists and is not empty; choose another --dir")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def run_new_plugin(args: argparse.Namespace, console: Any) -> int:
    """The ``txblocks new-plugin NAME [--dir DIR]`` command; 0 on success, else 1."""
    try:
        root = new_plugin(args.name, args.dir)
    except (ValueError, FileExistsError) as exc:
        console.print(str(exc), markup=False, highlight=False)
        return 1
    console.print(f"created {root}/", markup=False, highlight=False)
    for relative in sorted(render(args.name)):
        console.print(f"  {relative}", markup=False, highlight=False)
    console.print(f"next: cd {root} && pip install -e '.[test]' && pytest", markup=False,
                  highlight=False)  # fmt: skip
    return 0
