"""``txblocks new-plugin``: the template table, ``plugins/template/``, and a generated plugin."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from txblocks.plugins import load_registry
from txblocks.testing import check_component
from txblocks.testing.scaffold import new_plugin, render, run_new_plugin

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO / "plugins" / "template"
IGNORED = {"__pycache__", ".pytest_cache", "build", "dist"}


def _files(root: Path) -> dict[str, str]:
    """Text of every file under ``root`` except build and cache outputs."""
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and not any(part in IGNORED or part.endswith(".egg-info") for part in path.parts)
    }


def _toml(text: str) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads(text)


def test_plugins_template_is_the_rendered_table():
    want = render("template")
    got = _files(TEMPLATE_DIR)
    assert sorted(got) == sorted(want), "regenerate with new_plugin('template', ...)"
    for path, text in want.items():
        assert got[path] == text, f"plugins/template/{path} differs from scaffold.TEMPLATE"
    pyproject = _toml(want["pyproject.toml"])
    assert pyproject["project"]["name"] == "txblocks-template"
    assert pyproject["project"]["dependencies"] == ["txblocks"]
    assert pyproject["project"]["entry-points"]["txblocks"] == {
        "template": "txblocks_template.plugin"
    }
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"


@pytest.mark.parametrize(("name", "dist", "package", "entry"), [
    ("scalenorm", "txblocks-scalenorm", "txblocks_scalenorm", "scalenorm"),
    ("my-norms", "txblocks-my-norms", "txblocks_my_norms", "my_norms"),
    ("txblocks-my_norms", "txblocks-my-norms", "txblocks_my_norms", "my_norms"),
])  # fmt: skip
def test_names_are_substituted(name, dist, package, entry):
    files = render(name)
    assert f"{package}/plugin.py" in files
    pyproject = _toml(files["pyproject.toml"])
    assert pyproject["project"]["name"] == dist
    assert pyproject["project"]["entry-points"]["txblocks"] == {entry: f"{package}.plugin"}
    assert f"from {package} import plugin" in files["tests/test_plugin.py"]
    assert not any("{{" in text for text in files.values())


@pytest.mark.parametrize("name", ["ScaleNorm", "1norm", "my--norm", "norm-", "", "my norm"])
def test_invalid_names_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="invalid plugin name"):
        new_plugin(name, tmp_path)


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "txblocks-mine").mkdir()
    (tmp_path / "txblocks-mine" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        new_plugin("mine", tmp_path)
    assert (tmp_path / "txblocks-mine" / "keep.txt").read_text() == "mine"


class _Console:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text: str, **_: object) -> None:
        self.lines.append(text)


def test_the_cli_command(tmp_path):
    console = _Console()
    args = argparse.Namespace(name="my-norms", dir=str(tmp_path))
    assert run_new_plugin(args, console) == 0
    assert console.lines[0] == f"created {tmp_path / 'txblocks-my-norms'}/"
    assert "  txblocks_my_norms/plugin.py" in console.lines
    assert run_new_plugin(args, console) == 1
    assert "already exists" in console.lines[-1]


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """A new plugin written under tmp_path, importable; its modules are forgotten after."""
    root = new_plugin("gen-norms", tmp_path)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield root
    for name in [m for m in sys.modules if m.startswith("txblocks_gen_norms")]:
        del sys.modules[name]


def test_a_generated_plugin_registers_and_conforms(generated):
    plugin = importlib.import_module("txblocks_gen_norms.plugin")
    registry = load_registry(autoload=False, plugins=[plugin])
    assert registry.get("norm", "scalenorm").factory is plugin.ScaleNorm
    report = check_component(registry, "norm", "scalenorm", eps=1e-6)
    assert report.ran and not report.skipped


@pytest.mark.slow
def test_a_generated_plugins_own_tests_pass(generated):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(generated), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=generated, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed, 1 skipped" in result.stdout or "6 passed" in result.stdout
