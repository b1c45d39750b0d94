"""The documentation site: generated pages cover the live schema and registry; the site builds.

The generators live in docs/gen/ (run by mkdocs-gen-files); the full build needs the
``docs`` extra (``make docs`` installs it) and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import txblocks
from txblocks.spec.schema import json_schema

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT / "docs" / "gen"
SPECS = sorted((ROOT / "examples" / "specs").glob("*.yaml"))
HEADING = re.compile(r"^#{2,3} .*\{ #([\w-]+) \}$", re.M)


@pytest.fixture(scope="module")
def gen() -> dict[str, ModuleType]:
    """The generator modules of docs/gen (they import each other by plain name)."""
    sys.path.insert(0, str(GEN))
    try:
        return {name: importlib.import_module(name) for name in
                ("schema_tables", "spec_reference", "component_catalogue", "example_pages",
                 "readme_page")}
    finally:
        sys.path.remove(str(GEN))


@pytest.fixture(scope="module")
def live() -> tuple[Any, dict[str, Any], dict[str, tuple[str, str]]]:
    registry = txblocks.default_registry()
    schema = json_schema(registry)
    sys.path.insert(0, str(GEN))
    try:
        from spec_reference import component_defs
    finally:
        sys.path.remove(str(GEN))
    return registry, schema, component_defs(registry)


def sections(markdown: str) -> dict[str, str]:
    """Anchor -> the text under that heading, down to the next anchored heading."""
    marks = list(HEADING.finditer(markdown))
    return {m.group(1): markdown[m.end():(marks[i + 1].start() if i + 1 < len(marks) else None)]
            for i, m in enumerate(marks)}


def fields_listed(section: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


def test_spec_reference_lists_every_field_of_the_schema(gen, live) -> None:
    registry, schema, components = live
    text = gen["spec_reference"].render(schema, components)
    found = sections(text)
    anchor = gen["schema_tables"].anchor
    names = gen["spec_reference"].spec_defs(schema, components)
    assert {"DecoderSpec", "EncoderSpec", "Seq2SeqSpec", "VitSpec", "BlockSpec",
            "AttentionSpec", "LayerOverride", "EmbeddingSpec"} <= set(names)
    for name in names:
        definition = schema["$defs"][name]
        listed = fields_listed(found[anchor(name)])
        assert listed == set(definition.get("properties", {})), f"{name}: fields differ"
        for field, prop in definition.get("properties", {}).items():
            if prop.get("description"):
                cell = gen["schema_tables"].cell(prop["description"])
                assert cell in found[anchor(name)], f"{name}.{field}: description missing"
    assert fields_listed(found["extending"]) == set(schema["anyOf"][1]["properties"])


def test_catalogue_lists_every_component_and_its_parameters(gen, live) -> None:
    registry, schema, components = live
    text = gen["component_catalogue"].render(registry, schema, components)
    found = sections(text)
    anchor = gen["schema_tables"].anchor
    by_key = {key: name for name, key in components.items()}
    for entry in registry.entries():
        section = found[anchor(f"{entry.kind}-{entry.name}")]
        assert str(entry.owner) in section
        # a kind no spec field holds (hf_family) has no definition in the schema: no parameters
        definition = schema["$defs"].get(by_key[entry.kind, entry.name], {})
        properties = set(definition.get("properties", {})) - {"type"}
        assert fields_listed(section) == properties, f"{entry.kind} {entry.name}: fields differ"
    for kind in registry.kinds():
        assert anchor(kind) in found
    # Every definition of the schema is described on one of the two pages.
    spec_names = set(gen["spec_reference"].spec_defs(schema, components))
    described = spec_names | {n for n in schema["$defs"] if anchor(n) in found} | set(components)
    assert set(schema["$defs"]) <= described


def test_catalogue_includes_a_plugin_registered_in_this_registry(gen) -> None:
    from txblocks.registry import ComponentConfig, Owner

    class TinyNormConfig(ComponentConfig):
        """A test norm."""

        eps: float = 1e-3

    registry = txblocks.load_registry(autoload=False)
    with registry.owned_by(Owner("txblocks-tinynorm", "9.9")):
        registry.add("norm", "tinynorm", lambda dim, config: None, TinyNormConfig)
    schema = json_schema(registry)
    components = gen["spec_reference"].component_defs(registry)
    text = gen["component_catalogue"].render(registry, schema, components)
    section = sections(text)["norm-tinynorm"]
    assert "txblocks-tinynorm 9.9" in section and "| `eps` | number | `0.001` |" in section


def test_examples_page_draws_every_example_spec(gen) -> None:
    text = gen["example_pages"].render(SPECS)
    assert text.count("```mermaid\nflowchart TB\n") == len(SPECS) > 0
    for path in SPECS:
        assert f"{{ #{path.stem} }}" in text


def test_readme_links_point_at_the_site(gen) -> None:
    text = gen["readme_page"].render((ROOT / "README.md").read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert target.startswith(("http", "#")) or not target.startswith(("docs/", "../")), target


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """The whole site, as `make docs` builds it: a broken link, anchor, reference or
    docstring cross-reference, or a page missing from the nav, fails the build."""
    pytest.importorskip("mkdocs_gen_files", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra")
    pytest.importorskip("material", reason="the docs extra")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    examples = (tmp_path / "site" / "examples" / "index.html").read_text(encoding="utf-8")
    assert examples.count('<pre class="mermaid">') == len(SPECS)
