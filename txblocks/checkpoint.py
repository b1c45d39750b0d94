"""Safe checkpoints: safetensors files that carry their model's spec. No pickle anywhere.

Header metadata (format 1), besides the caller's string pairs: ``txblocks.format``,
``txblocks.version``, ``txblocks.spec`` (the validated spec as JSON, every field written out
and ``extends`` dropped, so later default changes cannot change a saved model) and
``txblocks.aliases`` (JSON ``{alias: stored name}``: entries that are one tensor, such as a
tied LM head, are stored once under their first ``state_dict`` name; loading feeds every
alias). Non-persistent buffers are not in ``state_dict``, so they are not saved.

``txblocks.checksums`` (JSON ``{stored name: "sha256:<hex>"}``) holds a digest of each
tensor's dtype, shape and bytes, written by :func:`save` and verified when a tensor is read:
bytes overwritten in the data section, or a dtype changed in the header, are refused. Files
written before the checksums existed load with a warning. Weights that are not finite (NaN,
inf) are refused unless ``allow_non_finite=True``.

The stored spec must be self-contained: :func:`load` refuses ``extends`` (which would read
another file), and checks the file's tensor names and shapes against the spec built on the
meta device before anything is allocated.

``quantization`` is written only when the spec sets it, and the file then holds float weights:
:func:`save` refuses quantized models (int8 weights do not give back the float ones), and
:func:`load` builds the float model, loads the weights, then quantizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from txblocks.build import build, build_on_meta, measure
from txblocks.errors import BuildError, QuantizationError, SpecError
from txblocks.quantize import apply_quantization, quantized_linears
from txblocks.registry import Registry
from txblocks.spec.io import load_spec
from txblocks.spec.limits import MAX_SPEC_BYTES, human_bytes
from txblocks.spec.models import ModelSpec

__all__ = ["FORMAT", "CheckpointError", "LoadReport", "Mismatch", "load", "load_weights", "save"]

FORMAT = 1
FORMAT_KEY, VERSION_KEY = "txblocks.format", "txblocks.version"
SPEC_KEY, ALIASES_KEY = "txblocks.spec", "txblocks.aliases"
CHECKSUMS_KEY = "txblocks.checksums"
_FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16}
PathLike = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; ``problems`` lists every reason at once."""

    def __init__(self, path: PathLike, problems: Sequence[str] | str, *,
                 action: str = "cannot load", hint: str | None = None) -> None:
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        lines = [f"{action} checkpoint {self.path} ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  {p}" for p in self.problems] + ([hint] if hint else [])
        super().__init__("\n".join(lines))


class Mismatch(NamedTuple):
    """A tensor whose shape in the file differs from the model's."""

    name: str
    expected: tuple[int, ...]
    found: tuple[int, ...]


@dataclass
class LoadReport:
    """What :func:`load_weights` did not load: model entries with no tensor in the file
    (``missing``), file tensors no entry takes (``unexpected``), differing shapes (``mismatched``).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def problems(self) -> list[str]:
        return ([f"missing from the file: {n}" for n in self.missing]
                + [f"unexpected in the file (no such model entry): {n}" for n in self.unexpected]
                + [f"shape mismatch for {m.name}: the model expects {m.expected}, "
                   f"the file has {m.found}" for m in self.mismatched])


class _Header(NamedTuple):
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype | None  # of every floating tensor, when they agree


def _read_header(path: Path) -> _Header:
    if not path.is_file():
        raise CheckpointError(path, "not a file" if path.exists() else "file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            shapes = {n: tuple(s.get_shape()) for n, s in slices.items()}
            floats = {s.get_dtype() for s in slices.values()} & _FLOATS.keys()
            dtype = _FLOATS[floats.pop()] if len(floats) == 1 else None
            return _Header(f.metadata() or {}, shapes, dtype)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            path, f"not a safetensors file, or its header is corrupted: {exc}") from None


def _view_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Equal for two state-dict entries that are the very same tensor (storage and view)."""
    storage = t.untyped_storage()
    # Meta storages have no data pointer (all 0): tell them apart by the storage object.
    ident = storage._cdata if t.is_meta else storage.data_ptr()
    return (t.device, ident, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _digest(t: torch.Tensor) -> str:
    """``sha256:<hex>`` of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return f"sha256:{h.hexdigest()}"


def _json_map(meta: Mapping[str, str], key: str, default: str) -> dict[str, str] | None:
    """``meta[key]`` as a JSON object of strings, or None when it is not one."""
    try:
        value = json.loads(meta.get(key, default))
    except (json.JSONDecodeError, RecursionError):
        return None
    ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return value if ok else None


def _plan(model: nn.Module, header: _Header,
          aliases: Mapping[str, str]) -> tuple[dict[str, str], LoadReport]:
    """For each model entry, the file tensor that feeds it; and what cannot be loaded."""
    state = model.state_dict()
    tied: dict[tuple[Any, ...], list[str]] = {}
    for name, t in state.items():
        tied.setdefault(_view_key(t), []).append(name)

    def source(name: str) -> str | None:
        mates = tied[_view_key(state[name])] if state[name].numel() else []
        for candidate in (name, *mates):
            for src in (candidate, aliases.get(candidate)):
                if src is not None and src in header.shapes:
                    return src
        return None

    plan: dict[str, str] = {}
    report, used = LoadReport(), set()
    for name, t in state.items():
        src = source(name)
        if src is None:
            report.missing.append(name)
            continue
        used.add(src)
        if tuple(t.shape) != header.shapes[src]:
            report.mismatched.append(Mismatch(name, tuple(t.shape), header.shapes[src]))
        else:
            plan[name] = src
    report.unexpected = [n for n in header.shapes if n not in state and n not in used]
    return plan, report


def _integrity(path: Path, meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor],
               weights: set[str], allow_non_finite: bool) -> list[str]:
    """Checksum and finiteness problems of the tensors read from ``path``."""
    problems = []
    checksums = _json_map(meta, CHECKSUMS_KEY, "{}")
    if checksums is None:
        problems.append(f"{CHECKSUMS_KEY} must be a JSON object mapping tensor names to digests")
    elif CHECKSUMS_KEY in meta:
        for name in sorted(tensors):
            expected = checksums.get(name)
            if expected is None:
                problems.append(f"{name} has no checksum in {CHECKSUMS_KEY} (added after save?)")
            elif _digest(tensors[name]) != expected:
                problems.append(f"checksum mismatch for {name}: its bytes, dtype or shape "
                                "differ from what txblocks.save wrote (a damaged or edited file)")
    elif SPEC_KEY in meta:
        warnings.warn(f"{path}: no {CHECKSUMS_KEY} in the header (written by an older "
                      "txblocks.save?); its weights cannot be verified", stacklevel=4)
    if not allow_non_finite:
        for name in sorted(weights):
            t = tensors[name]
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                nan, total = int(torch.isnan(t).sum()), t.numel()
                inf = int(torch.isinf(t).sum())
                problems.append(f"{name} is not finite ({nan:,} NaN and {inf:,} inf of "
                                f"{total:,} values); pass allow_non_finite=True to load it anyway")
    return problems


def _aliases(header: _Header) -> tuple[dict[str, str], list[str]]:
    aliases = _json_map(header.metadata, ALIASES_KEY, "{}")
    if aliases is None:  # an alias of a name absent from the file resolves to nothing: missing
        return {}, [f"{ALIASES_KEY} must be a JSON object mapping names to names"]
    return aliases, []


def load_weights(model: nn.Module, path: PathLike, *, strict: bool = True,
                 allow_non_finite: bool = False) -> LoadReport:
    """Copy a safetensors file's tensors into ``model`` in place, like ``load_state_dict``.

    Entries that are one tensor in the model (a tied head) need one of their names in the
    file; dtypes and devices are converted. Each tensor read is checked against its
    checksum when the file has them (files of :func:`save`).

    Args:
        path: any safetensors file, with or without a spec.
        strict: raise unless every entry matches; ``False`` loads what matches.
        allow_non_finite: load parameters holding NaN or inf instead of refusing them.

    Returns:
        What was missing, unexpected or of the wrong shape (all empty when ``strict``).

    Raises:
        CheckpointError: the file is unreadable, a tensor fails its checksum, a parameter is
            not finite, or (``strict``) anything does not match: every problem is listed, and
            the model is left unchanged.
    """
    path = Path(path)
    header = _read_header(path)
    aliases, problems = _aliases(header)
    plan, report = _plan(model, header, aliases)
    if problems or (strict and not report.ok):
        raise CheckpointError(path, problems + report.problems)
    # Everything is read and checked before anything is copied: the model stays as it was.
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {src: f.get_tensor(src) for src in set(plan.values())}
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    weights = {src for name, src in plan.items() if name in params}
    problems = _integrity(path, header.metadata, tensors, weights, allow_non_finite)
    if problems:
        raise CheckpointError(path, problems)
    with torch.no_grad():  # copy_ converts dtype and device; tied entries get the same tensor
        model.load_state_dict({name: tensors[src] for name, src in plan.items()}, strict=False)
    return report


def _stored_spec(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    """The header's spec as a mapping, refused when it is not self-contained."""
    if SPEC_KEY not in meta:
        raise CheckpointError(path, f"no {SPEC_KEY} in the header metadata: was it written by "
                              "txblocks.save? use txblocks.load_weights(model, path) for raw "
                              "safetensors files")
    problems = []
    if not (meta.get(FORMAT_KEY, "").isdecimal() and int(meta[FORMAT_KEY]) <= FORMAT):
        problems.append(f"{FORMAT_KEY} is {meta.get(FORMAT_KEY)!r}; this txblocks reads formats "
                        f"1 to {FORMAT} (written by a newer txblocks?)")
    data: Any = None
    if len(meta[SPEC_KEY]) > MAX_SPEC_BYTES:
        problems.append(f"{SPEC_KEY} is {human_bytes(len(meta[SPEC_KEY]))}, over the limit of "
                        f"{human_bytes(MAX_SPEC_BYTES)} (txblocks.spec.limits.MAX_SPEC_BYTES)")
    else:
        try:
            data = json.loads(meta[SPEC_KEY])
        except json.JSONDecodeError as exc:
            problems.append(f"{SPEC_KEY} is not valid JSON: {exc}")
        except RecursionError:
            problems.append(f"{SPEC_KEY} nests too deeply")
        else:
            if not isinstance(data, dict):
                problems.append(f"{SPEC_KEY} must be a JSON object of spec fields, got "
                                f"{type(data).__name__}")
            elif data.get("extends") is not None:
                problems.append(f"{SPEC_KEY} has 'extends'; a stored spec must be "
                                "self-contained (txblocks.save writes every field), so it may "
                                "not name another spec or file")
    if problems:
        raise CheckpointError(path, problems)
    return data


def _check_shapes(path: Path, header: _Header, floating: ModelSpec, device: torch.device | None,
                  registry: Registry | None) -> None:
    """Refuse a file whose tensors do not fit the stored spec, before allocating the model:
    names and shapes are compared with the spec built on the meta device."""
    meta = build_on_meta(floating, device=device, registry=registry)
    aliases, problems = _aliases(header)
    _, report = _plan(meta, header, aliases)
    if problems or not report.ok:
        values = sum(torch.Size(s).numel() for s in header.shapes.values())
        size = (f"the stored spec implies {measure(meta)}; the file holds {values:,} values in "
                f"{len(header.shapes)} tensors ({human_bytes(path.stat().st_size)})")
        raise CheckpointError(path, [*problems, *report.problems], hint=size)


def load(path: PathLike, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, registry: Registry | None = None,
         strict: bool = True, allow_non_finite: bool = False,
         allow_large: bool = False) -> nn.Module:
    """Rebuild a model written by :func:`save`: the spec from the header, then the weights.

    Nothing is allocated before the file's tensor names and shapes are checked against the
    stored spec (built on the meta device), and each tensor is verified against its checksum.

    Args:
        path: the checkpoint.
        device: where to build (default CPU).
        dtype: default the dtype of the saved floating tensors when they agree, else float32.
        registry: the components the spec may name; default :func:`txblocks.default_registry`.
        strict: as in :func:`load_weights`; with ``False`` what did not load is warned about.
        allow_non_finite: load weights holding NaN or inf instead of refusing them.
        allow_large: as in :func:`txblocks.build`: skip the device-memory check.

    Returns:
        The model :func:`txblocks.build` makes of the spec, in eval mode, ties restored. When
        the stored spec declares ``quantization``, the float model is built, its weights
        loaded, and then it is quantized (:func:`txblocks.quantize`).

    Raises:
        CheckpointError: every problem with the file, its spec (the :class:`SpecError`, e.g.
            a component of a plugin not installed here, is the ``__cause__``) or its weights.
    """
    path = Path(path)
    header = _read_header(path)
    data = _stored_spec(path, header.metadata)
    try:
        spec = load_spec(data, registry=registry)
        dtype = header.dtype if dtype is None else dtype
        # A declared quantization comes after the float weights are in (see _quantize).
        floating = spec if spec.quantization is None else spec.model_copy(
            update={"quantization": None})
        if strict:
            _check_shapes(path, header, floating, None if device is None else torch.device(
                device), registry)
        model = build(floating, device=device, dtype=dtype, registry=registry,
                      allow_large=allow_large)
    except SpecError as exc:
        raise CheckpointError(path, [f"spec {p}" for p in exc.problems], hint=(
            "the spec stored in the file does not validate here; a component it names may come "
            "from a plugin that is not installed (or pass registry=)")) from exc
    except BuildError as exc:
        raise CheckpointError(path, f"the spec cannot be built here: {exc}") from exc
    report = load_weights(model, path, strict=strict, allow_non_finite=allow_non_finite)
    if not report.ok:
        warnings.warn(f"{path}: loaded with strict=False; " + "; ".join(report.problems),
                      stacklevel=2)
    if spec.quantization is not None:
        _quantize(model, spec, path)
    return model.eval()


def _quantize(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Apply the quantization that a stored spec declares, to the float weights just loaded."""
    try:
        apply_quantization(model, spec.quantization)
    except QuantizationError as exc:
        raise CheckpointError(
            path, f"the spec's quantization cannot be applied here: {exc}") from exc
    model.spec = spec


def _unsaved(spec: ModelSpec) -> set[str]:
    """Spec fields left out of the header: ``extends`` (resolved), and ``quantization`` when
    unset, so that files of unquantized models are what they were before the field existed."""
    return {"extends"} | ({"quantization"} if spec.quantization is None else set())


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One tensor per storage view, contiguous and on CPU, plus ``{alias: stored name}``."""
    kept: dict[tuple[Any, ...], str] = {}
    tensors, aliases = {}, {}
    for name, t in state.items():
        key = _view_key(t)
        if t.numel() and key in kept:
            aliases[name] = kept[key]
        else:
            kept[key] = name
            tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_pattern(path: Path) -> re.Pattern[str]:
    """Names of :func:`_write_atomically`'s temp folders for ``path``: pid, host, random."""
    return re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.([0-9a-f]{{8}})\.[0-9a-f]{{12}}\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp folders of saves to ``path`` that were killed (their process, on this
    host, is gone); those of running saves, and of other hosts, are left alone."""
    pattern = _tmp_pattern(path)
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and match[2] == _HOST and not _alive(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)


def _write_atomically(path: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
    """Write into a temp folder next to ``path``, then rename the file over it: ``path`` is
    the old file or the new one. safetensors writes its own hidden temp file next to the file
    it saves; inside our folder, a save that is killed leaves one folder, named after
    ``path``, which the next save removes. The new file's mode follows the umask."""
    if not path.parent.is_dir():
        raise CheckpointError(path, f"directory {path.parent} does not exist",
                              action="cannot save")
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_HOST}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.mkdir(0o777)  # mode from the umask
    try:
        target = tmp / path.name
        save_file(tensors, str(target), metadata=metadata)
        os.chmod(target, tmp.stat().st_mode & 0o666)  # safetensors creates it 0600
        with open(target, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save(model: nn.Module, path: PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model`` and its spec to a safetensors file that :func:`load` rebuilds.

    Args:
        model: a model from :func:`txblocks.build` (it has ``.spec``).
        path: the file; an existing one is replaced atomically (temp folder, then rename).
        metadata: extra string pairs for the header; keys may not start with ``txblocks.``.

    Raises:
        CheckpointError: the model has no spec, the metadata is not str to str, or the model
            is quantized (save the float model; :func:`load` quantizes a spec that declares it).
    """
    path = Path(path)
    quantized = quantized_linears(model)
    if quantized:
        raise CheckpointError(path, (
            f"{type(model).__name__} is quantized ({len(quantized)} int8 linear layers, e.g. "
            f"{quantized[0]}); its int8 weights cannot give back the float weights they were "
            "rounded from"), action="cannot save", hint=(
            "save the float model instead, and quantize after loading: "
            "txblocks.quantize(txblocks.load(path), mode), or `txblocks generate --quantize int8`"))
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise CheckpointError(path, (
            f"{type(model).__name__} has no .spec (not built by txblocks.build), so load could "
            "not rebuild it; for a raw state dict use safetensors.torch.save_model(model, path) "
            "and txblocks.load_weights(model, path)"), action="cannot save")
    header = dict(metadata or {})
    problems = [f"metadata key {k!r} is reserved (keys starting with 'txblocks.' are ours)"
                for k in header if isinstance(k, str) and k.startswith("txblocks.")]
    problems += [f"metadata must map str to str; {k!r}: {v!r} is not"
                 for k, v in header.items() if not (isinstance(k, str) and isinstance(v, str))]
    if problems:
        raise CheckpointError(path, problems, action="cannot save")
    tensors, aliases = _dedupe(model.state_dict())
    from txblocks import __version__  # here: txblocks/__init__ imports this module

    header.update({
        FORMAT_KEY: str(FORMAT), VERSION_KEY: __version__, ALIASES_KEY: json.dumps(aliases),
        SPEC_KEY: json.dumps(spec.model_dump(mode="json", exclude=_unsaved(spec))),
        CHECKSUMS_KEY: json.dumps({name: _digest(t) for name, t in tensors.items()}),
    })
    _write_atomically(path, tensors, header)
