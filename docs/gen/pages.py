"""Pages generated when the site is built (run by mkdocs-gen-files, see mkdocs.yml).

Everything is read from the live registry of this environment, so the site cannot drift
from the code: the spec reference and the component catalogue from the JSON Schema and
the registry, the examples from examples/specs/ through ``txblocks draw``, the overview
from README.md, and the API page of every module in txblocks.nn.
"""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

import mkdocs_gen_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import component_catalogue  # noqa: E402
import example_pages  # noqa: E402
import readme_page  # noqa: E402
import spec_reference  # noqa: E402

import txblocks  # noqa: E402
import txblocks.nn  # noqa: E402
from txblocks.spec.schema import json_schema  # noqa: E402


def nn_modules() -> list[str]:
    """Every module of txblocks.nn (subpackages' modules included), sorted."""
    return sorted(m.name for m in pkgutil.walk_packages(txblocks.nn.__path__, "txblocks.nn.")
                  if not m.name.rsplit(".", 1)[-1].startswith("_"))


def nn_page() -> str:
    out = ["# txblocks.nn", "",
           "Spec-free modules: each takes already-built submodules and never reads a spec, "
           "so any of them can be built and tested by hand. Only `txblocks.build` turns a "
           "spec into these modules.", ""]
    for name in nn_modules():
        out += [f"::: {name}", "    options:", "      heading_level: 2", ""]
    return "\n".join(out)


def main() -> None:
    registry = txblocks.default_registry()
    schema = json_schema(registry)
    components = spec_reference.component_defs(registry)
    plugins = sorted({e.owner.name for e in registry.entries()} - {"txblocks"})
    pages = {
        "reference/spec.md": spec_reference.render(schema, components, plugins),
        "reference/components.md": component_catalogue.render(registry, schema, components),
        "examples.md": example_pages.render(sorted((ROOT / "examples" / "specs").glob("*.yaml"))),
        "overview.md": readme_page.render((ROOT / "README.md").read_text(encoding="utf-8")),
        "api/nn.md": nn_page(),
    }
    for path, text in pages.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)


main()
