"""Reading and writing specs: YAML/JSON text, files, dicts, and ``extends:``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from txblocks.errors import Problem, SpecError, did_you_mean
from txblocks.registry import Registry
from txblocks.spec.checks import check_spec
from txblocks.spec.errors import format_path, problems_from
from txblocks.spec.limits import MAX_DEPTH, MAX_SPEC_BYTES, check_text_size, check_tree
from txblocks.spec.models import ModelSpec
from txblocks.spec.schema import spec_models

__all__ = ["PRESETS_DIR", "dump_yaml", "load_spec", "preset_names", "validate_spec"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
_SUFFIXES = (".yaml", ".yml", ".json")


def preset_names() -> list[str]:
    """Names that ``extends:`` accepts without a path (the shipped example specs)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


class _TooDeep(yaml.composer.ComposerError):
    """Nesting past :data:`MAX_DEPTH`, refused while composing (PyYAML recurses per level)."""


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping, and nesting deeper
    than :data:`txblocks.spec.limits.MAX_DEPTH` (before PyYAML's recursion overflows)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(None, None, f"the spec nests deeper than {MAX_DEPTH} levels",
                               self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_text(text: str, source: str) -> Any:
    check_text_size(len(text.encode("utf-8", "surrogatepass")), source)
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)
    except _TooDeep as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"{exc.problem}{where} (txblocks.spec.limits.MAX_DEPTH)",
                        source=source) from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the text"
        problem = exc.problem or ""
        if "constructor for the tag" in problem:
            message = (f"unsupported YAML tag at {where}: {problem}; specs are read safely "
                       "and never construct Python objects")
        else:
            message = f"invalid YAML at {where}: {problem}"
        raise SpecError([Problem("", message)], source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the text"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise SpecError([Problem("", f"malformed YAML at {where}: {detail}")], source=source) from None
    check_tree(data, source)  # aliases expanded: refuse a bomb before anything walks it
    return data


def _read_text(path: Path) -> str:
    """The UTF-8 text of the spec file ``path``; a :class:`SpecError` naming the file when it
    is missing, a folder or not a regular file, unreadable, too big or not UTF-8."""
    source = str(path)
    if not path.exists():
        raise SpecError(f"spec file not found: {path}", source=source)
    if path.is_dir():
        raise SpecError(f"{path} is a folder, not a spec file", source=source)
    if not path.is_file():  # a FIFO or a device such as /dev/zero: could block or never end
        raise SpecError(f"{path} is not a regular file", source=source)
    check_text_size(path.stat().st_size, source)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)  # the file may have grown since stat
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}", source=source) from None
    check_text_size(len(raw), source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, column "
                        f"{column}; save the spec as UTF-8", source=source) from None


class _Pairs(dict):  # type: ignore[type-arg]
    """A JSON object, remembering a key that it was given twice (``json`` keeps the last)."""

    duplicate: str | None = None


def _json_object(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.duplicate = key
                break
            seen.add(key)
    return obj


def _duplicate_key(data: Any) -> str | None:
    """``"'arch' at block.ffn"``-style description of the first key given twice, or None."""
    stack: list[tuple[Any, list[str | int]]] = [(data, [])]
    while stack:  # iterative: check_tree has bounded the depth, not the recursion
        node, path = stack.pop()
        if isinstance(node, _Pairs) and node.duplicate is not None:
            return f"{node.duplicate!r} in {format_path(path) or 'the top-level object'}"
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
            node, list) else ()
        stack.extend((v, [*path, k]) for k, v in reversed(list(items)))
    return None


def _read_file(path: Path) -> Any:
    text = _read_text(path)
    if path.suffix != ".json":
        return _parse_text(text, str(path))
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=str(path)
        ) from None
    except RecursionError:
        raise SpecError(f"the spec nests deeper than {MAX_DEPTH} levels "
                        "(txblocks.spec.limits.MAX_DEPTH)", source=str(path)) from None
    check_tree(data, str(path))
    duplicate = _duplicate_key(data)
    if duplicate is not None:
        raise SpecError(f"duplicate key {duplicate}; JSON would keep only the last value",
                        source=str(path))
    return _plain(data)


def _plain(node: Any) -> Any:
    """``node`` with every :class:`_Pairs` made a plain ``dict``."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and text.strip().endswith(_SUFFIXES)


def _merge(base: Any, override: Any) -> Any:
    """``override`` on top of ``base``; a component whose ``type`` changes is replaced whole.

    A component's shorthand (``rope``) counts as ``{type: rope}`` when the other side
    is a mapping.
    """
    if isinstance(base, str) and isinstance(override, dict):
        base = {"type": base}
    if isinstance(base, dict) and "type" in base and isinstance(override, str):
        override = {"type": override}
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    if "type" in override and base.get("type") != override["type"]:
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if key in base else value
    return merged


def _resolve_extends(data: dict[str, Any], base_dir: Path | None, seen: tuple[str, ...]) -> dict[str, Any]:
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SpecError([Problem("extends", f"expected a preset name or a file path, got {parent!r}")])
    if parent.endswith(_SUFFIXES):
        if Path(parent).is_absolute():
            raise SpecError([Problem("extends", f"{parent!r} is an absolute path; extends takes "
                                     "a preset name or a path relative to the spec's folder")])
        if base_dir is None:
            raise SpecError([Problem("extends", (
                f"{parent!r} is a file, but this spec was given as text or a mapping, so it has "
                "no folder to resolve it against; use a preset name, or load the spec from its "
                "file"))])
        path = base_dir / parent
        key, parent_dir = str(path.resolve()), path.parent
        if not path.is_file():
            raise SpecError([Problem("extends", f"file not found: {path}")])
    else:
        names = preset_names()
        if parent not in names:
            raise SpecError([
                Problem("extends", f"unknown preset {parent!r}; presets: {', '.join(names)}"
                        f"{did_you_mean(parent, names)}")
            ])
        path, key, parent_dir = PRESETS_DIR / f"{parent}.yaml", f"preset:{parent}", PRESETS_DIR
    if key in seen:
        raise SpecError([Problem("extends", f"cycle: {' -> '.join((*seen, key))}")])
    base = _read_file(path)
    if not isinstance(base, dict):
        raise SpecError([Problem("extends", f"{path} does not hold a mapping")])
    base = _resolve_extends(base, parent_dir, (*seen, key))
    child = {k: v for k, v in data.items() if k != "extends"}
    return _merge({k: v for k, v in base.items() if k != "extends"}, child)


def validate_spec(data: Any, registry: Registry, *, source: str | None = None) -> ModelSpec:
    """Validate a spec mapping (``extends`` already resolved) and run the cross-field checks."""
    models = spec_models(registry)
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a mapping of fields, got {type(data).__name__}", source=source)
    check_tree(data, source)
    try:
        spec = models.adapter.validate_python(data)
    except ValidationError as exc:
        raise SpecError(problems_from(models.annotation, exc), source=source) from None
    except (TypeError, ValueError) as exc:  # e.g. unhashable keys that pydantic cannot report
        raise SpecError(f"could not read the spec: {exc}", source=source) from None
    problems = check_spec(spec)
    if problems:
        raise SpecError(problems, source=source)
    return spec


def load_spec(source: Any, *, registry: Registry | None = None) -> ModelSpec:
    """Load and validate a spec.

    Args:
        source: a path (``str`` ending in .yaml/.yml/.json, or ``Path``), YAML or
            JSON text, a mapping, or an already validated spec (returned as is).
        registry: the components the spec may name; default
            :func:`txblocks.default_registry`.

    Returns:
        The validated spec (a :class:`txblocks.ModelSpec` of its ``arch``).

    ``extends:`` takes a shipped preset name, or (in a spec read from a file) a path relative
    to that file's folder; absolute paths, and file paths in specs given as text or a
    mapping, are refused. Specs over the limits of :mod:`txblocks.spec.limits` (bytes,
    values with YAML aliases expanded, nesting, layers, implied parameters) are refused
    before they are validated or built.

    Raises:
        SpecError: every problem found, each with its path. YAML is read with
            ``yaml.safe_load``: tags such as ``!!python/object`` are rejected.
    """
    if isinstance(source, ModelSpec):
        return source
    if registry is None:
        from txblocks.plugins import default_registry

        registry = default_registry()
    base_dir: Path | None = None
    label: str | None = None
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(source)
        data, base_dir, label = _read_file(path), path.parent, str(path)
    elif isinstance(source, str):
        data = _parse_text(source, "<text>")
    elif isinstance(source, dict):
        check_tree(source)
        data = source
    else:
        raise SpecError(f"cannot load a spec from {type(source).__name__}; pass a path, text or dict")
    if isinstance(data, dict):
        try:
            data = _resolve_extends(data, base_dir, ())
        except SpecError as exc:
            raise SpecError(exc.problems, source=label) from None
    return validate_spec(data, registry, source=label)


def dump_yaml(spec: ModelSpec) -> str:
    """``spec`` as YAML, leaving out values equal to their defaults."""
    data = spec.model_dump(mode="json", exclude_defaults=True, exclude={"extends"})
    return yaml.safe_dump(_tag_first(data), sort_keys=False)


def _tag_first(node: Any) -> Any:
    """Put ``arch`` / ``type`` first in every mapping, as people write them."""
    if isinstance(node, list):
        return [_tag_first(item) for item in node]
    if not isinstance(node, dict):
        return node
    keys = sorted(node, key=lambda k: k not in ("arch", "type"))
    return {k: _tag_first(node[k]) for k in keys}
