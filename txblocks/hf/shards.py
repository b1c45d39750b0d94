"""The safetensors weights of a Hugging Face folder, read and written one tensor at a time.

Reading: ``model.safetensors``, or the shards that ``model.safetensors.index.json`` lists.
Every file is checked by ``safetensors`` itself (``safe_open``: header, offsets, a data
section that covers them) before anything is read, and every problem of the folder is
collected at once (:attr:`Shards.problems`). A tensor is then read with plain file reads
into memory of its own: the file is never mapped, so no page of it stays resident beside
the model, and a later rewrite of the folder cannot change (or crash) a loaded model.

Writing: :class:`ShardWriter` takes tensors in any order and writes a shard each time the
tensors it holds reach ``max_shard_size``, then the index, as ``transformers``'
``save_pretrained`` names them (``model-00001-of-00003.safetensors``).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from txblocks.errors import Problem

__all__ = ["INDEX", "WEIGHTS", "ShardWriter", "Shards", "parse_size"]

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


@dataclass(frozen=True)
class _Entry:
    """Where one tensor's bytes are: file, dtype, shape, absolute byte range."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def _header(path: Path) -> tuple[dict[str, _Entry], list[Problem]]:
    """The entries of one safetensors file, after ``safetensors`` validated it."""
    name = path.name
    try:
        with safe_open(str(path), framework="pt", device="cpu"):
            pass
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = f"not a readable safetensors file (truncated or corrupt?): {why}"
        return {}, [Problem(name, why)]
    entries, problems = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            problems.append(Problem(f"{name}: {key}", (
                f"dtype {info['dtype']} is not one txblocks reads; supported: {', '.join(_DTYPES)}"
            )))  # fmt: skip
            continue
        begin, end = info["data_offsets"]
        entries[key] = _Entry(path, dtype, tuple(info["shape"]), 8 + size + begin, 8 + size + end)
    return entries, problems


def _inside(folder: Path, file: str) -> Path | None:
    """``folder / file`` when it stays inside ``folder`` (an index may not point elsewhere)."""
    path = (folder / file).resolve()
    return path if path.parent == folder.resolve() else None


def _index(folder: Path) -> tuple[dict[str, str] | None, list[Problem]]:
    """``weight_map`` of the index: tensor name -> shard file."""
    try:
        data = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [Problem(INDEX, f"not a readable JSON file: {exc}")]
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        return None, [Problem(INDEX, "has no 'weight_map' object of tensor names to file names")]
    return weight_map, []


def _no_weights(folder: Path) -> Problem:
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt*")
    )
    why = f"no {WEIGHTS} and no {INDEX}"
    if pickled:
        why += (f"; {', '.join(pickled)} are pickle files, which txblocks does not read (they "
                "can run code): re-save them with transformers' save_pretrained, which writes "
                "safetensors")  # fmt: skip
    return Problem(str(folder), why)


class Shards:
    """Every tensor of a folder's safetensors weights, by name, readable one at a time.

    Construction reads only headers; :attr:`problems` lists everything wrong with the
    folder (no weights, a missing or corrupt shard, an index naming a tensor its shard
    lacks, an unknown dtype). Use as a context manager to close the files.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.problems: list[Problem] = []
        self.entries: dict[str, _Entry] = {}
        self.metadata: dict[str, str] = {}
        self._handles: dict[Path, BinaryIO] = {}
        if (self.folder / INDEX).is_file():
            self._read_index()
        elif (self.folder / WEIGHTS).is_file():
            entries, problems = _header(self.folder / WEIGHTS)
            self.entries, self.problems = entries, problems
        else:
            self.problems.append(_no_weights(self.folder))

    def _read_index(self) -> None:
        weight_map, problems = _index(self.folder)
        self.problems += problems
        if weight_map is None:
            return
        by_file: dict[str, list[str]] = {}
        for tensor, file in weight_map.items():
            by_file.setdefault(file, []).append(tensor)
        for file, names in by_file.items():
            path = _inside(self.folder, file)
            if path is None:
                self.problems.append(Problem(INDEX, f"{file!r} is outside the folder"))
                continue
            if not path.is_file():
                listed = (f"{len(names)} tensors in it, e.g. {names[0]}" if len(names) > 1
                          else f"{names[0]} in it")  # fmt: skip
                why = f"not found (the index lists {listed})"
                self.problems.append(Problem(file, why))
                continue
            entries, problems = _header(path)
            self.problems += problems
            if problems:
                continue
            absent = [n for n in names if n not in entries]
            self.problems += [
                Problem(n, f"listed in {INDEX} in {file}, which does not hold it") for n in absent
            ]
            # a tensor also in another shard: the index decides where it is read from
            self.entries.update(
                {n: e for n, e in entries.items() if weight_map.get(n, file) == file}
            )

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every file opened for reading."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def shape(self, name: str) -> torch.Size:
        return torch.Size(self.entries[name].shape)

    def dtypes(self) -> set[torch.dtype]:
        """The dtypes of the floating tensors."""
        return {e.dtype for e in self.entries.values() if e.dtype.is_floating_point}

    def nbytes(self) -> int:
        return sum(e.end - e.start for e in self.entries.values())

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name``, in memory of its own (a plain file read, no mapping).

        Raises:
            OSError: the file changed since its header was read (fewer bytes than listed).
        """
        entry = self.entries[name]
        handle = self._handles.get(entry.file)
        if handle is None:
            handle = self._handles[entry.file] = open(entry.file, "rb")  # noqa: SIM115
        size = entry.end - entry.start
        data = torch.empty(size, dtype=torch.uint8)
        handle.seek(entry.start)
        got = handle.readinto(memoryview(data.numpy())) if size else 0
        if got != size:
            raise OSError(f"{entry.file.name}: {name} ends after the end of the file "
                          f"({got} of {size} bytes); was the file changed while loading?")
        return data.view(entry.dtype).reshape(entry.shape)


def parse_size(size: int | str) -> int:
    """Bytes of ``5GB`` / ``500MB`` / ``2GiB`` / ``1000`` (as ``transformers`` reads them).

    Raises:
        ValueError: not a size.
    """
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    text = str(size).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}  # fmt: skip
    for unit, factor in units.items():
        if text.endswith(unit):
            number = text[: -len(unit)]
            break
    else:
        number, factor = text, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        why = "expected bytes or e.g. '5GB', '500MB'"
        raise ValueError(f"max_shard_size {size!r}: {why}") from None
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


class ShardWriter:
    """Writes tensors to shards of at most ``max_shard_size`` bytes (a larger tensor gets
    a shard of its own), then renames them ``model-0000i-of-0000n.safetensors`` and writes
    the index, or one ``model.safetensors`` when one shard holds everything.

    Holds at most one shard's tensors at a time. ``convert`` maps each shard's tensors
    before they are written (``transformers``' names on disk).
    """

    def __init__(
        self,
        folder: Path,
        max_shard_size: int,
        metadata: Mapping[str, str],
        *,
        convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.folder = folder
        self.max_shard_size = max_shard_size
        self.metadata = dict(metadata)
        self._convert = convert
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_size:
            self.flush()
        self._pending[name] = tensor.detach()
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def flush(self) -> None:
        """Write the tensors held so far as the next shard."""
        if not self._pending:
            return
        tensors, self._pending, self._pending_bytes = self._pending, {}, 0
        if self._convert is not None:
            tensors = self._convert(tensors)
        tensors = {n: t.to("cpu").contiguous() for n, t in tensors.items()}
        path = self.folder / f".txblocks-shard-{len(self._written):05d}.tmp"
        save_file(tensors, str(path), metadata=self.metadata)
        self._written.append((path, list(tensors)))

    def finish(self, before: Callable[[list[str]], object] | None = None) -> list[str]:
        """Name the shards and write the index (several shards); the files written.

        ``before`` is called with those file names just before the shards take them.
        """
        self.flush()
        n = len(self._written)
        files = [WEIGHTS] if n == 1 else [
            f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
        ]  # fmt: skip
        if n != 1:
            files.append(INDEX)
        if before is not None:
            before(files)
        weight_map = {}
        for (path, names), file in zip(self._written, files, strict=False):
            os.replace(path, self.folder / file)
            weight_map.update(dict.fromkeys(names, file))
        self._written = []
        if n != 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            (self.folder / INDEX).write_text(text, encoding="utf-8")
        return files

    def abort(self) -> None:
        """Remove the shards written so far."""
        self._pending = {}
        for path, _ in self._written:
            path.unlink(missing_ok=True)
        self._written = []
