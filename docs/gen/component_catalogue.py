"""The component catalogue page: every registered component, installed plugins included.

Kind, name, owner (the distribution that registered it) and description come from the
registry; the parameters come from the same live JSON Schema as the spec reference.
"""

from __future__ import annotations

from typing import Any

from schema_tables import Tables, anchor, cell
from spec_reference import spec_defs

__all__ = ["render", "slots_of_kind"]

SPEC = "spec.md"


def slots_of_kind(schema: dict[str, Any], tables: Tables) -> dict[str, list[str]]:
    """Kind -> the fields (``BlockSpec.ffn``) that hold a component of that kind."""
    found: dict[str, list[str]] = {}
    for def_name, definition in schema["$defs"].items():
        for field, prop in definition.get("properties", {}).items():
            for candidate in (prop, *prop.get("anyOf", []), prop.get("items", {})):
                kind = candidate.get("txblocks_kind") or tables.union_kind(candidate)
                if kind:
                    found.setdefault(kind, [])
                    if f"{def_name}.{field}" not in found[kind]:
                        found[kind].append(f"{def_name}.{field}")
                    break
    return found


def render(registry: Any, schema: dict[str, Any], components: dict[str, tuple[str, str]]) -> str:
    """The Markdown of the catalogue."""
    defs = schema["$defs"]
    in_spec = spec_defs(schema, components)
    by_key = {key: name for name, key in components.items()}
    nested = [n for n in Tables(defs, components, {}, "").reachable(list(components), set())
              if n not in components and n not in in_spec]
    links = {n: SPEC for n in in_spec} | {n: "" for n in nested}
    links |= {n: "" for n in components}
    tables = Tables(defs, components, links, "")
    used = slots_of_kind(schema, tables)
    owners = sorted({str(e.owner) for e in registry.entries()})
    out = [
        "# Component catalogue",
        "",
        "Generated from the registry of the environment that built this site (what "
        "`txblocks list` shows): the built-ins and every installed plugin. Owners here: "
        + ", ".join(f"`{o}`" for o in owners) + ". In a spec a component is "
        "`{type: NAME, ...params}` or just `NAME`; the parameters are validated like the "
        f"rest of the [spec]({SPEC}).",
        "",
        "| kind | components |",
        "|---|---|",
    ]
    for kind in registry.kinds():
        names = ", ".join(f"[`{n}`](#{anchor(kind + '-' + n)})" for n in registry.names(kind))
        out.append(f"| [{kind}](#{anchor(kind)}) | {names} |")
    out.append("")
    for kind in registry.kinds():
        out += [f"## {kind} {{ #{anchor(kind)} }}", ""]
        if used.get(kind):
            fields = ", ".join(tables.ref(*f.split(".", 1)) for f in used[kind])
            out += [f"Taken by {fields}.", ""]
        out += ["| name | owner | description |", "|---|---|---|"]
        for entry in registry.entries(kind):
            out.append(f"| [`{entry.name}`](#{anchor(kind + '-' + entry.name)}) | "
                       f"{cell(str(entry.owner))} | {cell(entry.description)} |")
        out.append("")
        for entry in registry.entries(kind):
            name = by_key[kind, entry.name]
            definition = defs.get(name, {})
            out += [f"### `{entry.name}` {{ #{anchor(kind + '-' + entry.name)} }}", "",
                    f"*{kind}* from `{entry.owner}` · config "
                    f"`{entry.config.__module__}.{entry.config.__qualname__}`", ""]
            if definition.get("description"):
                out += [definition["description"], ""]
            out += [tables.table(definition, skip=("type",)), ""]
    if nested:
        out += ["## Nested parameter models", "",
                "Models that component parameters hold (e.g. RoPE's `scaling`).", ""]
        for name in nested:
            out += [f"### {name} {{ #{anchor(name)} }}", ""]
            if defs[name].get("description"):
                out += [defs[name]["description"], ""]
            out += [tables.table(defs[name]), ""]
    return "\n".join(out)
