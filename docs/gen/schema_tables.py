"""JSON Schema to Markdown: the field tables of the spec reference and of the catalogue.

Only the schema is read (``txblocks.spec.schema.json_schema``), so a table can hold no
field, default or description that the schema does not.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Tables", "anchor", "cell"]

BOUNDS = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<",
          "minItems": "items ≥", "maxItems": "items ≤", "minLength": "length ≥"}


def anchor(name: str) -> str:
    """The anchor of a definition's heading (``BlockSpec`` -> ``blockspec``)."""
    return name.lower().replace("_", "-")


def cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


class Tables:
    """Renders fields of the definitions in ``defs``.

    Args:
        defs: the schema's ``$defs``.
        components: definition name -> ``(kind, name)`` for every registered component.
        links: definition name -> the page (``""`` for this page) whose heading
            ``#anchor(name)`` describes it; kinds link to ``catalogue``.
        catalogue: the catalogue page, relative to the page being written.
    """

    def __init__(self, defs: dict[str, Any], components: dict[str, tuple[str, str]],
                 links: dict[str, str], catalogue: str) -> None:
        self.defs, self.components, self.links, self.catalogue = defs, components, links, catalogue

    def target(self, name: str) -> str | None:
        """The link to the section describing definition ``name``, if any."""
        if name in self.components:
            kind, component = self.components[name]
            return f"{self.catalogue}#{anchor(kind + '-' + component)}"
        page = self.links.get(name)
        return f"{page}#{anchor(name)}" if page is not None else None

    def ref(self, name: str, field: str = "") -> str:
        """A link to definition ``name`` (or to its ``field``), labelled in spec terms."""
        dotted = f"{name}.{field}" if field else name
        label = f"`{dotted}`"
        if name in self.components:
            kind, component = self.components[name]
            label = f"`{component}.{field}` ({kind})" if field else f"`{component}` ({kind})"
        link = self.target(name)
        return f"[{label}]({link})" if link is not None else label

    def kind(self, kind: str) -> str:
        return f"a [`{kind}`]({self.catalogue}#{anchor(kind)}) component"

    def union_kind(self, schema: dict[str, Any]) -> str | None:
        """The component kind of a discriminated union of components, else None."""
        names = [m.get("$ref", "").rsplit("/", 1)[-1] for m in schema.get("oneOf", [])]
        kinds = {self.components[n][0] for n in names if n in self.components}
        if names and len(kinds) == 1 and all(n in self.components for n in names):
            return kinds.pop()
        return None

    def type_of(self, schema: dict[str, Any]) -> str:
        """A short, linked description of what a field takes."""
        if "txblocks_kind" in schema:
            return self.kind(schema["txblocks_kind"]) + self._nullable(schema)
        if "$ref" in schema:
            return self.ref(schema["$ref"].rsplit("/", 1)[-1])
        if "anyOf" in schema or "oneOf" in schema:
            kind = self.union_kind(schema)
            if kind is not None:
                return self.kind(kind)
            members = schema.get("anyOf") or schema["oneOf"]
            unions = [m for m in members if "discriminator" in m and self.union_kind(m)]
            tags = {t for m in unions for t in m["discriminator"]["mapping"]}
            kept = [m for m in members if not (
                tags and set(m.get("enum", [m.get("const")])) <= tags)]
            parts = list(dict.fromkeys(self.type_of(m) for m in kept))
            return " or ".join(parts)
        if "enum" in schema:
            return "one of " + ", ".join(_code(v) for v in schema["enum"])
        if "const" in schema:
            return _code(schema["const"])
        kind = schema.get("type", "any")
        if kind == "array":
            if "prefixItems" in schema:
                text = "[" + ", ".join(self.type_of(m) for m in schema["prefixItems"]) + "]"
            else:
                items = self.type_of(schema.get("items", {}))
                if items.startswith("a [") and items.endswith(" component"):
                    items = items[2:] + "s"  # "a [`adapter`](…) component" -> "[…] components"
                text = f"list of {items}"
        elif kind == "object":
            text = "mapping"
        else:
            text = {"integer": "integer", "number": "number", "string": "string",
                    "boolean": "boolean", "null": "null"}.get(kind, str(kind))
        bounds = [f"{sign} {schema[key]}" for key, sign in BOUNDS.items() if key in schema]
        return text + (f" ({', '.join(bounds)})" if bounds else "")

    def _nullable(self, schema: dict[str, Any]) -> str:
        members = schema.get("anyOf", [])
        return " or null" if any(m.get("type") == "null" for m in members) else ""

    def default_of(self, name: str, schema: dict[str, Any], required: set[str]) -> str:
        if name in required:
            return "**required**"
        if "default" not in schema:  # a default_factory: the model's own defaults, or []
            if "$ref" in schema:
                return "its defaults"
            return "`[]`" if schema.get("type") == "array" else "—"
        value = schema["default"]
        if isinstance(value, dict) and set(value) == {"type"}:
            value = value["type"]
        return _code(value)

    def description_of(self, schema: dict[str, Any]) -> str:
        text = schema.get("description")
        if text is None and "$ref" in schema:
            target = self.defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
            text = (target.get("description") or "").split("\n\n")[0]
        return cell(text or "")

    def table(self, definition: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
        """The fields of one definition: name, type, default, description."""
        required = set(definition.get("required", []))
        rows = ["| field | takes | default | description |", "|---|---|---|---|"]
        for name, schema in definition.get("properties", {}).items():
            if name in skip:
                continue
            rows.append(f"| `{name}` | {cell(self.type_of(schema))} | "
                        f"{cell(self.default_of(name, schema, required))} | "
                        f"{self.description_of(schema)} |")
        return "\n".join(rows) if len(rows) > 2 else "No parameters."

    def reachable(self, roots: list[str], stop: set[str]) -> list[str]:
        """Definitions reachable from ``roots`` without entering those in ``stop``, in order."""
        seen: dict[str, None] = {}
        todo = list(roots)
        while todo:
            name = todo.pop(0)
            if name in seen or name in stop or name not in self.defs:
                continue
            seen[name] = None
            todo += _refs(self.defs[name])
        return list(seen)


def _refs(schema: Any) -> list[str]:
    """Every ``$ref`` target name inside ``schema``, in order."""
    if isinstance(schema, dict):
        found = [schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else []
        for value in schema.values():
            found += _refs(value)
        return found
    if isinstance(schema, list):
        return [r for item in schema for r in _refs(item)]
    return []
