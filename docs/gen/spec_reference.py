"""The spec reference page: every spec model of the live JSON Schema as a table.

``render(schema, components)`` takes the schema of ``txblocks.spec.schema.json_schema``
(the installed components' unions included) and writes one section per model that a spec
reaches without entering a component; components are the catalogue's (component_catalogue.py).
"""

from __future__ import annotations

from typing import Any

from schema_tables import Tables, anchor

__all__ = ["arch_defs", "component_defs", "render", "spec_defs"]

CATALOGUE = "components.md"
EXTENDING = "extending"


def component_defs(registry: Any) -> dict[str, tuple[str, str]]:
    """Schema definition name -> ``(kind, name)`` of every component in ``registry``."""
    from txblocks.spec.components import unions_for

    return {model.__name__: key for key, model in unions_for(registry).models.items()}


def arch_defs(schema: dict[str, Any]) -> dict[str, str]:
    """``arch`` tag -> its definition name, from the top-level discriminator."""
    top = schema["anyOf"][0]
    return {tag: ref.rsplit("/", 1)[-1] for tag, ref in top["discriminator"]["mapping"].items()}


def spec_defs(schema: dict[str, Any], components: dict[str, tuple[str, str]]) -> list[str]:
    """The definitions this page describes: the archs and what they reach, components aside."""
    tables = Tables(schema["$defs"], components, {}, CATALOGUE)
    return tables.reachable(list(arch_defs(schema).values()), set(components))


def render(schema: dict[str, Any], components: dict[str, tuple[str, str]],
           plugins: list[str] | None = None) -> str:
    """The Markdown of the spec reference."""
    defs = schema["$defs"]
    names = spec_defs(schema, components)
    links = {name: "" for name in names} | {name: CATALOGUE for name in defs if name not in names}
    tables = Tables(defs, components, links, CATALOGUE)
    archs = arch_defs(schema)
    out = [
        "# Spec reference",
        "",
        "Generated, when this site was built, from the JSON Schema of the installed components "
        "(what `txblocks schema` prints"
        + (f"; plugins: {', '.join(plugins)}" if plugins else "")
        + "), so every field, default and description below is the schema's. "
        "Component slots take `{type: NAME, ...params}` or just `NAME`; their parameters are "
        f"in the [component catalogue]({CATALOGUE}).",
        "",
        "A spec is one of these architectures, chosen by `arch`, or "
        f"[a spec that extends another](#{EXTENDING}):",
        "",
        "| `arch` | model | |",
        "|---|---|---|",
    ]
    for tag, name in archs.items():
        first = (defs[name].get("description") or "").split("\n\n")[0]
        out.append(f"| `{tag}` | [{name}](#{anchor(name)}) | {' '.join(first.split())} |")
    out.append("")
    for name in names:
        if name == next(iter(archs.values()), None):
            out += ["## Architectures", ""]
        elif name not in archs.values() and name == _first_part(names, archs):
            out += ["## Parts of a spec", ""]
        out += _section(name, defs[name], tables, archs)
    extending = schema["anyOf"][1]
    out += [
        f"## A spec that extends another {{ #{EXTENDING} }}",
        "",
        "With `extends:` a spec may leave out anything its base gives (even `arch`); it is "
        "validated whole once the base is merged in.",
        "",
        tables.table(extending),
        "",
    ]
    return "\n".join(out)


def _first_part(names: list[str], archs: dict[str, str]) -> str | None:
    return next((n for n in names if n not in archs.values()), None)


def _section(name: str, definition: dict[str, Any], tables: Tables,
             archs: dict[str, str]) -> list[str]:
    tags = [tag for tag, n in archs.items() if n == name]
    title = f"### {name}" + (f" (`arch: {tags[0]}`)" if tags else "")
    out = [f"{title} {{ #{anchor(name)} }}", ""]
    if definition.get("description"):
        out += [definition["description"], ""]
    return out + [tables.table(definition), ""]
