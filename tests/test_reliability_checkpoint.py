"""Checkpoints that lie: a stored spec reaching for other files, a tiny file claiming a huge
model, bytes or dtypes changed after save, non-finite weights; and saves that are killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import txblocks
from txblocks import checkpoint as ckpt
from txblocks.checkpoint import CHECKSUMS_KEY, SPEC_KEY, CheckpointError, load, save

DECODER: dict[str, Any] = {
    "arch": "decoder", "vocab_size": 50, "d_model": 32, "n_layers": 2, "n_heads": 4,
    "max_seq_len": 16,
}


@pytest.fixture
def saved(registry, gen, tmp_path) -> tuple[txblocks.TransformerModel, Path]:
    model = txblocks.build(DECODER, registry=registry)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    path = tmp_path / "m.safetensors"
    save(model, path)
    return model, path


def rewrite(path: Path, **meta: str | None) -> None:
    """``path`` with its tensors kept and header metadata entries replaced (None: removed)."""
    with safe_open(str(path), framework="pt") as f:
        tensors, old = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    old.update(meta)
    save_file(tensors, str(path), {k: v for k, v in old.items() if v is not None})


def stored_spec(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[SPEC_KEY])


# --- 1. a stored spec is self-contained ---------------------------------------------------


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_stored_spec_with_extends_reads_no_file(registry, saved, tmp_path, monkeypatch, where):
    _, path = saved
    secret_value = f"s3cr3t-{os.getpid()}-{time.time_ns()}"
    secret = tmp_path / "private" / "secret.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"name": secret_value, "api_key": secret_value}))
    monkeypatch.chdir(tmp_path / "private")
    target = str(secret) if where == "absolute" else "../private/secret.json"
    rewrite(path, **{SPEC_KEY: json.dumps({**stored_spec(path), "extends": target})})
    opened: list[str] = []
    real_open = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        opened.append(str(self)), real_open(self, *a, **k))[1])
    with pytest.raises(CheckpointError, match="self-contained") as info:
        load(path, registry=registry)
    assert secret_value not in str(info.value) and "api_key" not in str(info.value)
    assert opened == []


def test_a_stored_spec_that_is_a_path_string_is_refused(registry, saved, tmp_path):
    _, path = saved
    (tmp_path / "other.yaml").write_text("arch: decoder\n")
    rewrite(path, **{SPEC_KEY: json.dumps(str(tmp_path / "other.yaml"))})
    with pytest.raises(CheckpointError, match="must be a JSON object of spec fields, got str"):
        load(path, registry=registry)


# --- 2. shapes checked before allocating -----------------------------------------------------


@pytest.mark.parametrize("claim", [
    {"d_model": 2048, "n_heads": 16, "n_layers": 8, "vocab_size": 32000},
    {"n_layers": 10**9},
])
def test_a_tiny_file_claiming_a_huge_model_is_refused_fast(registry, saved, monkeypatch, claim):
    _, path = saved
    rewrite(path, **{SPEC_KEY: json.dumps({**stored_spec(path), **claim})})

    def no_allocation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the real model was built before the file was checked")

    monkeypatch.setattr(ckpt, "build", no_allocation)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load(path, registry=registry)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert str(path) in message
    if claim["n_layers"] == 8:
        assert re.search(r"shape mismatch for embeddings.tokens.weight: the model expects "
                         r"\(32000, 2048\), the file has \(50, 32\)", message)
        assert re.search(r"the stored spec implies [\d,]+ parameters, \d+\.\d GB in float32; "
                         r"the file holds [\d,]+ values in \d+ tensors \(\d+\.\d KB\)", message)
    else:
        assert "n_layers: 1,000,000,000 layers; txblocks builds at most" in message


# --- 6. integrity -------------------------------------------------------------------------


def tensor_at(path: Path, offset: int) -> str:
    """The tensor whose data holds byte ``offset`` of the file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            if 8 + n + start <= offset < 8 + n + end:
                return name
    raise AssertionError(f"no tensor at byte {offset}")


def test_overwritten_bytes_are_refused_naming_the_tensor(registry, gen, saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    offset = int(torch.randint(8 + n, len(raw), (), generator=gen))
    raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=re.escape(f"checksum mismatch for "
                                                        f"{tensor_at(path, offset)}: ")):
        load(path, registry=registry)


def test_a_changed_header_dtype_is_refused(registry, gen, saved):
    _, path = saved
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    names = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    name = names[int(torch.randint(len(names), (), generator=gen))]
    header[name]["dtype"] = "I32"  # same size: safetensors accepts it
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    with pytest.raises(CheckpointError, match=re.escape(f"checksum mismatch for {name}: its "
                                                        "bytes, dtype or shape differ")):
        load(path, registry=registry)


def test_a_file_saved_before_checksums_loads_with_a_warning(registry, gen, saved):
    model, path = saved
    rewrite(path, **{CHECKSUMS_KEY: None})
    with pytest.warns(UserWarning, match=re.escape(f"{path}: no {CHECKSUMS_KEY} in the header")):
        loaded = load(path, registry=registry)
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


def test_non_finite_weights_are_refused_unless_asked(registry, gen, tmp_path):
    model = txblocks.build(DECODER, registry=registry)
    names = sorted(n for n, _ in model.named_parameters())
    name = names[int(torch.randint(len(names), (), generator=gen))]
    with torch.no_grad():
        model.get_parameter(name).view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save(model, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{name} is not finite (1 NaN and 0 inf")):
        load(path, registry=registry)
    loaded = load(path, registry=registry, allow_non_finite=True)
    assert torch.isnan(loaded.get_parameter(name)).sum() == 1


# --- interrupted saves, file modes ------------------------------------------------------------


def test_a_killed_save_leaves_nothing_after_the_next_save(registry, saved, tmp_path):
    model, path = saved
    before = path.read_bytes()
    code = textwrap.dedent(f"""\
        import os, signal
        from pathlib import Path
        import txblocks
        from txblocks import checkpoint as ckpt
        from txblocks.plugins import load_registry

        def killed(tensors, filename, metadata=None):
            # like safetensors: a hidden temp file next to the target, half written
            Path(filename).with_name(".tmpAbC123").write_bytes(b"x" * 1_000_000)
            os.kill(os.getpid(), signal.SIGKILL)

        model = txblocks.build({DECODER!r}, registry=load_registry(autoload=False))
        ckpt.save_file = killed
        ckpt.save(model, {str(path)!r})
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 2  # the file and the killed save's temp folder
    save(model, path)
    assert sorted(tmp_path.iterdir()) == [path]
    load(path, registry=registry)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(registry, tmp_path, umask):
    model = txblocks.build(DECODER, registry=registry)
    old = os.umask(umask)
    try:
        save(model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
