"""Fuzzing hostile and mistaken input end to end: spec files, checkpoint headers, command lines.

Whatever comes in, what comes out is a result or one of txblocks' clear errors: never a
traceback from deep inside, never a hang (hypothesis' ``deadline``, and a hard SIGALRM guard
that no ``except Exception`` can swallow), never a partial file. Models are tiny and the
example counts small, so that the file runs in about half a minute on two busy cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import txblocks
from txblocks import cli
from txblocks.checkpoint import CheckpointError
from txblocks.errors import BuildError, SpecError
from txblocks.plugins import default_registry, load_registry

REGISTRY = load_registry(autoload=False)
HARD_LIMIT_S = 20  # per example; hypothesis' deadline below is the finer check
FUZZ = settings(deadline=timedelta(seconds=8), derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

DECODER: dict[str, Any] = {
    "arch": "decoder", "vocab_size": 256, "max_seq_len": 80, "d_model": 16, "n_layers": 1,
    "n_heads": 2, "position": "rope", "block": {"ffn": {"type": "mlp", "hidden": 32}},
}  # every in_features a multiple of 16: aten._weight_int8pack_mm (--quantize int8) crashes
#    the process on CPU otherwise (torch 2.13), which no test can report
ENCODER: dict[str, Any] = {"arch": "encoder", "vocab_size": 64, "max_seq_len": 16,
                           "d_model": 16, "n_layers": 1, "n_heads": 2}


class Hang(BaseException):
    """An example ran past :data:`HARD_LIMIT_S`: a BaseException, so no handler hides it."""


@contextlib.contextmanager
def hard_limit(seconds: float = HARD_LIMIT_S) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"an example ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_the_hard_limit_stops_a_hang():
    with pytest.raises(Hang), hard_limit(0.2):
        while True:
            pass


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Tiny checkpoints, a tokenizer-that-is-not, spec files, a folder; built once."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    for name, spec in (("dec", DECODER), ("enc", ENCODER)):
        txblocks.save(txblocks.build(txblocks.load_spec(spec, registry=REGISTRY)),
                      root / f"{name}.safetensors")
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    (root / "dup.json").write_text('{"arch": "decoder", "arch": "encoder"}', encoding="utf-8")
    (root / "latin1.yaml").write_bytes(b"arch: decoder\nname: caf\xe9\n")
    (root / "notok.json").write_text('{"model": 1}', encoding="utf-8")
    (root / "folder.yaml").mkdir()
    os.mkfifo(root / "fifo")  # not a regular file: reading it would block, replacing it is wrong
    return root


# --- spec files -------------------------------------------------------------------------------

leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 70),
                   st.sampled_from([0.0, 1e-6, 0.5, 1e9, float("inf"), float("nan")]),
                   st.sampled_from(["mlp", "glu", "moe", "rope", "causal", "x", "", "gpt2"]),
                   st.text(max_size=6))
FIELDS = ["vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "arch",
          "position", "extends", "name", "block", "layers", "head", "init_std"]


@st.composite
def spec_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes): a tiny spec with a few fields changed, written as JSON or YAML, then
    maybe damaged: a key given twice, bytes that are not UTF-8, cut short, or random bytes."""
    spec = json.loads(json.dumps(DECODER))
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(FIELDS))
        if field == "block" and draw(st.booleans()):
            spec["block"] = {"ffn": {}}
            spec["block"]["ffn"] = {"type": "moe", "experts": draw(st.sampled_from(
                [1, 4, 1025, 10**9])), "top_k": draw(st.integers(0, 6)),
                "expert": {"type": "mlp", "hidden": 8}}
        else:
            spec[field] = draw(leaves)
    suffix = draw(st.sampled_from([".json", ".yaml", ".yml"]))
    text = (json.dumps(spec) if suffix == ".json" else yaml.safe_dump(spec)).encode()
    damage = draw(st.sampled_from(["none", "duplicate", "bytes", "cut", "random"]))
    if damage == "duplicate":
        text = (text.replace(b'{"arch"', b'{"arch": "encoder", "arch"', 1) if suffix == ".json"
                else b"n_layers: 3\n" + text)
    elif damage == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + text[at:]
    elif damage == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif damage == "random":
        text = draw(st.binary(max_size=64))
    return suffix, text


@settings(FUZZ, max_examples=150)
@given(spec_files())
def test_spec_files_load_or_raise_spec_error(work, case):
    suffix, data = case
    path = work / f"case{suffix}"
    path.write_bytes(data)
    with hard_limit():
        try:
            spec = txblocks.load_spec(path, registry=REGISTRY)
        except SpecError as exc:
            assert str(path) in str(exc)  # the error names the file
            event("SpecError")
            return
        try:
            txblocks.build(spec, registry=REGISTRY, device="meta")
        except BuildError:
            event("BuildError")
        else:
            event("built")


# --- checkpoint headers -----------------------------------------------------------------------


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@st.composite
def checkpoints(draw: st.DrawFn, blob: bytes) -> bytes:
    """A valid tiny checkpoint with its header changed: a tensor's dtype, shape or offsets,
    the stored spec, the checksums or the metadata, or the framing itself."""
    header, data = _split(blob)
    meta = header["__metadata__"]
    tensors = sorted(k for k in header if k != "__metadata__")
    how = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "spec", "spec_field",
                                "checksums", "metadata", "length", "cut"]))
    name = draw(st.sampled_from(tensors))
    if how == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F16", "BF16", "I64", "U8", "BOOL", "Q"]))
    elif how == "shape":
        header[name]["shape"] = draw(st.lists(st.integers(0, 2**40), max_size=4))
    elif how == "offsets":
        header[name]["data_offsets"] = draw(st.lists(st.integers(0, 2**40), min_size=2,
                                                     max_size=2))
    elif how == "drop":
        del header[name]
    elif how == "spec":
        meta["txblocks.spec"] = draw(st.one_of(
            st.text(max_size=20), st.sampled_from(['"gpt2.yaml"', "[]", "{}", "null", "{{",
                                                   '{"extends": "gpt2"}'])))
    elif how == "spec_field":
        spec = json.loads(meta["txblocks.spec"])
        spec[draw(st.sampled_from(FIELDS))] = draw(leaves)
        meta["txblocks.spec"] = json.dumps(spec)
    elif how == "checksums":
        meta["txblocks.checksums"] = draw(st.sampled_from(["", "{}", "[1]", '{"x": 1}']))
    elif how == "metadata":
        meta[draw(st.sampled_from(sorted(meta)))] = draw(st.text(max_size=8))
    out = _join(header, data)
    if how == "length":
        out = struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + out[8:]
    elif how == "cut":
        out = out[:draw(st.integers(0, len(out)))]
    return out


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_checkpoint_headers_load_or_raise_checkpoint_error(work, data):
    blob = data.draw(checkpoints((work / "dec.safetensors").read_bytes()))
    path = work / "case.safetensors"
    path.write_bytes(blob)
    with hard_limit():
        try:
            model = txblocks.load(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            event("CheckpointError")
            return
    event("loaded")
    assert model.spec.arch == "decoder"


# --- command lines ----------------------------------------------------------------------------

# Each list starts with two ordinary values, drawn three times in four; the rest are mistakes.
VALUES = {
    "int": ["1", "3", "0", "-1", "x", "1e3", "99999999999999999999"],
    "float": ["0.5", "1", "0", "-1", "nan", "inf", "x"],
    "device": ["cpu", "cpu", "cuda", "cuda:7", "meta", "mps", "gpu"],
    "prompt": ["ab", "héllo", "", "a" * 60, "ab\udcff"],
}
# Commands run in work/out (so that default outputs land there); inputs are one folder up.
BAD_FILES = [f"../{name}" for name in ("enc.safetensors", "dec.safetensors", "dec.yaml",
                                       "dup.json", "latin1.yaml", "notok.json", "folder.yaml",
                                       "missing.yaml", "fifo")]
SPECS = ["../dec.yaml", "../enc.yaml", *BAD_FILES]
CHECKPOINTS = ["../dec.safetensors", "../dec.safetensors", *BAD_FILES]
OUTS = ["a.json", "b.safetensors", ".", "no/such/x", "../dec.yaml/x", "../fifo"]
COMMANDS: dict[str, tuple[list[list[str]], dict[str, list[str]]]] = {
    # command: (choices for each positional, {flag: values})
    "list": ([["norm", "ffn", "bogus"], ["*", "r*", "["]], {}),
    "validate": ([SPECS], {}),
    "summary": ([SPECS], {"--seq-len": VALUES["int"]}),
    "schema": ([], {"-o": OUTS}),
    "generate": ([CHECKPOINTS], {
        "--prompt": VALUES["prompt"], "--max-new-tokens": VALUES["int"],
        "--temperature": VALUES["float"], "--top-k": VALUES["int"], "--top-p": VALUES["float"],
        "--seed": VALUES["int"], "--eos": VALUES["int"], "--tokenizer": BAD_FILES,
        "--device": VALUES["device"], "--do-sample": [], "--quantize": ["int8", "bogus"]}),
    "train": ([SPECS], {
        "--task": ["copy", "addition", "sorted", "bogus"], "--out": OUTS,
        "--device": VALUES["device"],
        "--dtype": ["float32", "bfloat16", "float64"], "--lr": VALUES["float"],
        "--warmup": VALUES["int"], "--seed": [*VALUES["int"], str(2**63 - 1), str(2**63)],
        "--grad-accum": VALUES["int"], "--save-every": VALUES["int"],
        "--checkpoint-dir": ["ckpt", *OUTS], "--resume": ["ckpt", *BAD_FILES]}),
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    def pick(values: list[str]) -> str:
        return draw(st.sampled_from(values[:2] if draw(st.integers(0, 3)) else values))

    command = draw(st.sampled_from(sorted(COMMANDS)))
    positionals, flags = COMMANDS[command]
    argv = [command, *(pick(choices) for choices in positionals)]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True)) if flags else []
    for flag in chosen:
        argv += [flag, pick(flags[flag])] if flags[flag] else [flag]
    if command == "generate" and "--prompt" not in argv and draw(st.integers(0, 5)):
        argv += ["--prompt", "ab"]
    if command == "train":  # at most two steps: the fuzz looks for errors, not for training
        argv += ["--steps", pick(["1", "2", "0", "-1", "x", "99999999999999999999"]),
                 "--batch-size", pick(["2", "4", "0", "99999999999999999999"])]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.text(max_size=8)))
    return argv


def _check_no_partial_files(work: Path) -> None:
    """Nothing half-written: no temp files left, every file in work/out whole."""
    leftovers = [p.name for p in work.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert (work / "fifo").is_fifo()
    for path in (work / "out").rglob("*"):
        resumable = "ckpt" in path.relative_to(work / "out").parts or any(
            part.startswith("step-") for part in path.parts)  # --checkpoint-dir: DCP's files
        if path.is_file() and not resumable:  # a whole schema or checkpoint, whatever its name
            try:
                json.loads(path.read_bytes())
            except ValueError:
                txblocks.load(path)


@settings(FUZZ, max_examples=100)
@given(command_lines())
def test_command_lines_exit_0_1_or_2_without_a_traceback(work, capsys, monkeypatch, argv):
    monkeypatch.setenv("TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD", "1")
    default_registry.cache_clear()
    shutil.rmtree(work / "out", ignore_errors=True)
    (work / "out").mkdir()
    (work / "out" / "a.json").write_text("{}", encoding="utf-8")  # outputs to replace whole
    shutil.copy(work / "dec.safetensors", work / "out" / "b.safetensors")
    monkeypatch.chdir(work / "out")
    with hard_limit():
        try:
            status = cli.main(argv)
        except SystemExit as exc:  # argparse: a usage error (2), or --help (0)
            status = exc.code
    out, err = capsys.readouterr()
    event(f"{argv[0]} exit {status}")  # pytest --hypothesis-show-statistics
    assert status in (0, 1, 2), (argv, status, out, err)
    assert "Traceback" not in out + err, argv
    if status == 1:
        assert (out + err).strip(), f"{argv}: exit 1 without a message"
    _check_no_partial_files(work)
