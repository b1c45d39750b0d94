"""Hostile and mistaken input: spec files, every command's flags and files, MoE sizes.

Each case gets one clear message that names what is wrong and where, exit status 2 for a
usage error (argparse) and 1 for a refused input, and never a traceback.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

import txblocks
from txblocks import cli
from txblocks.checkpoint import CheckpointError
from txblocks.errors import BuildError, KernelUnavailableError, PluginError, SpecError
from txblocks.plugins import default_registry, load_registry
from txblocks.spec.limits import MAX_EXPERTS, MAX_MODEL_EXPERTS
from txblocks.train import TrainError

DECODER = {"arch": "decoder", "vocab_size": 256, "max_seq_len": 16, "d_model": 16,
           "n_layers": 1, "n_heads": 2, "block": {"ffn": {"type": "mlp", "hidden": 32}}}
ENCODER = {"arch": "encoder", "vocab_size": 64, "max_seq_len": 16, "d_model": 16,
           "n_layers": 1, "n_heads": 2}


@pytest.fixture(autouse=True)
def fresh_default_registry():
    """A default registry built for this test (the CLI uses the cached one)."""
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny decoder and encoder checkpoints and their spec files, made once."""
    root = tmp_path_factory.mktemp("cli_errors")
    registry = load_registry(autoload=False)
    torch.manual_seed(0)
    paths = {}
    for name, spec in (("decoder", DECODER), ("encoder", ENCODER)):
        paths[name] = root / f"{name}.safetensors"
        txblocks.save(txblocks.build(txblocks.load_spec(spec, registry=registry)), paths[name])
        paths[f"{name}.yaml"] = root / f"{name}.yaml"
        paths[f"{name}.yaml"].write_text(yaml.safe_dump(spec), encoding="utf-8")
    paths["train.yaml"] = root / "train.yaml"  # the copy task needs 18 positions
    paths["train.yaml"].write_text(yaml.safe_dump({**DECODER, "max_seq_len": 32}), "utf-8")
    return paths


def run(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and everything printed (stdout and stderr), with whitespace runs made one
    space; a usage error's SystemExit is returned as its status."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    text = " ".join((out + err).split())
    assert "Traceback" not in text
    return status, text


# --- input files ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "where"), [
    ('{"arch": "decoder", "vocab_size": 64, "arch": "encoder"}', "'arch' in the top-level object"),
    ('{"arch": "decoder", "block": {"ffn": {"type": "mlp", "type": "glu"}}}', "'type' in block.ffn"),
    ('{"layers": [{"select": "odd", "ffn": "mlp", "ffn": "glu"}]}', "'ffn' in layers[0]"),
])
def test_a_key_given_twice_in_json_is_refused_with_its_path(tmp_path, capsys, text, where):
    path = tmp_path / "dup.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=re.escape(f"invalid spec {path} (1 problem):\n  <spec>: "
                                                  f"duplicate key {where}")):
        txblocks.load_spec(path)
    assert run(capsys, "validate", path) == (1, f"✗ {path} <spec>: duplicate key {where}; JSON "
                                                "would keep only the last value")


def test_a_key_given_twice_in_yaml_is_refused_with_its_line(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("arch: decoder\nd_model: 16\nd_model: 32\n", encoding="utf-8")
    status, text = run(capsys, "validate", path)
    assert (status, text) == (1, f"✗ {path} <spec>: invalid YAML at line 3, column 1: duplicate "
                                 "key 'd_model' (line 3)")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_bytes_that_are_not_utf8_are_refused_with_their_place(tmp_path, capsys, suffix):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes('{"arch": "decoder",\n "name": "café"}'.encode("latin-1"))
    message = "not UTF-8 text: byte 0xe9 at line 2, column 14; save the spec as UTF-8"
    with pytest.raises(SpecError, match=re.escape(f"invalid spec {path} (1 problem):\n  <spec>: "
                                                  f"{message}")):
        txblocks.load_spec(path)
    assert run(capsys, "summary", path) == (1, f"{path} invalid spec {path} (1 problem): "
                                               f"<spec>: {message}")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"arch": "decoder", "vocab_size": 64, "d_model": 16, '
                     b'"n_layers": 1, "n_heads": 2}')
    assert txblocks.load_spec(path).vocab_size == 64


def test_a_folder_instead_of_a_spec_file_is_refused(tmp_path, capsys):
    folder = tmp_path / "model.yaml"
    folder.mkdir()
    with pytest.raises(SpecError, match=re.escape(f"{folder} is a folder, not a spec file")):
        txblocks.load_spec(folder)
    assert run(capsys, "validate", folder) == (1, f"✗ {folder} <spec>: {folder} is a folder, "
                                                  "not a spec file")


def test_a_fifo_instead_of_a_spec_file_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    assert run(capsys, "validate", fifo) == (1, f"✗ {fifo} <spec>: {fifo} is not a regular file")


# --- generate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--temperature", "0", "must be a finite number above 0, got 0"),
    ("--temperature", "nan", "must be a finite number above 0, got nan"),
    ("--temperature", "hot", "expected a number, got 'hot'"),
    ("--top-p", "1.5", "must be a finite number above 0 and at most 1, got 1.5"),
    ("--top-p", "0", "must be a finite number above 0 and at most 1, got 0"),
    ("--top-k", "0", "must be at least 1, got 0"),
    ("--max-new-tokens", "-5", "must be at least 1, got -5"),
    ("--seed", "-1", "must be in 0..9223372036854775807, got -1"),
    ("--eos", "-2", "must be at least 0, got -2"),
    ("--device", "gpu", "expected cpu, cuda, cuda:N or mps, got 'gpu'"),
])
def test_generate_refuses_bad_settings_as_usage_errors(files, capsys, flag, value, message):
    status, text = run(capsys, "generate", files["decoder"], "--prompt", "ab", flag, value)
    assert status == 2
    assert f"txblocks generate: error: argument {flag}: {message}" in text


def test_generate_refuses_an_empty_prompt(files, capsys):
    assert run(capsys, "generate", files["decoder"], "--prompt", "") == (
        1, "--prompt is empty: give at least one token to continue")


def test_generate_refuses_a_prompt_longer_than_the_model(files, capsys):
    where = f"{files['decoder']} (decoder 'model')"
    assert run(capsys, "generate", files["decoder"], "--prompt", "abc", "--max-new-tokens",
               "20") == (1, f"--prompt is 3 tokens; with --max-new-tokens 20 that needs 23 "
                         f"positions, more than the max_seq_len 16 of {where}: lower "
                         "--max-new-tokens to 13")
    assert run(capsys, "generate", files["decoder"], "--prompt", "x" * 40) == (
        1, f"--prompt is 40 tokens; with --max-new-tokens 64 that needs 104 positions, more "
        f"than the max_seq_len 16 of {where}: shorten the prompt to under 16 tokens")


def test_generate_refuses_a_prompt_that_is_not_utf8(files, capsys):
    prompt = os.fsdecode(b"ab\xffc")  # what Python makes of such bytes in argv
    assert run(capsys, "generate", files["decoder"], "--prompt", prompt) == (
        1, "--prompt is not UTF-8 text: byte 0xff at character 3")


@pytest.mark.parametrize(("content", "message"), [
    ('{"model": {"type": "nope"}}', "{path} is not a Hugging Face tokenizer.json: "),
    (None, "{path} is a folder, not a tokenizer.json file"),
    ("missing", "tokenizer file not found: {path}"),
])
def test_generate_refuses_a_file_that_is_not_a_tokenizer(files, tmp_path, capsys, content,
                                                         message):
    pytest.importorskip("tokenizers")
    path = tmp_path / "tokenizer.json"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_text(content, encoding="utf-8")
    status, text = run(capsys, "generate", files["decoder"], "--prompt", "ab", "--tokenizer", path)
    assert status == 1
    assert text.startswith(message.format(path=path))


def test_generate_refuses_an_encoder_checkpoint(files, capsys):
    assert run(capsys, "generate", files["encoder"], "--prompt", "ab") == (
        1, f"{files['encoder']} (encoder 'model'): generate needs a decoder or seq2seq model, "
        "not encoder")


def test_generate_refuses_an_eos_outside_the_vocabulary(files, capsys):
    assert run(capsys, "generate", files["decoder"], "--prompt", "ab", "--eos", "256") == (
        1, f"--eos 256 is outside the vocabulary of {files['decoder']} (decoder 'model'): ids "
        "must be in 0..255")


@pytest.mark.parametrize("command", ["generate", "train"])
def test_device_cuda_without_cuda_is_refused(files, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    target = files["decoder"] if command == "generate" else files["decoder.yaml"]
    out = tmp_path / "never.safetensors"
    status, text = run(capsys, command, target, "--prompt" if command == "generate" else "--out",
                       "ab" if command == "generate" else out, "--device", "cuda")
    assert status == 1
    assert text.startswith("--device cuda: CUDA is not available (")
    assert text.endswith("); use --device cpu")
    assert not out.exists()


# --- summary, schema --------------------------------------------------------------------------


def test_summary_refuses_seq_len_0(files, capsys):
    status, text = run(capsys, "summary", files["decoder.yaml"], "--seq-len", "0")
    assert status == 2
    assert "txblocks summary: error: argument --seq-len: must be at least 1, got 0" in text


def test_schema_into_a_missing_folder_is_refused(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "model.schema.json"
    assert run(capsys, "schema", "-o", target) == (
        1, f"cannot write {target}: the folder {target.parent} does not exist")
    assert not (tmp_path / "no").exists()


def test_schema_into_a_folder_or_a_fifo_is_refused(tmp_path, capsys):
    assert run(capsys, "schema", "-o", tmp_path) == (
        1, f"cannot write {tmp_path}: it is a folder; give a file name")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert run(capsys, "schema", "-o", fifo) == (1, f"cannot write {fifo}: it is not a regular "
                                                     "file")
    assert fifo.is_fifo()


@pytest.mark.parametrize(("fails", "code", "reason"), [
    ("open", errno.EROFS, "Read-only file system"),
    ("fsync", errno.ENOSPC, "No space left on device"),
])
def test_schema_that_cannot_be_written_keeps_the_old_file(tmp_path, capsys, monkeypatch, fails,
                                                          code, reason):
    target = tmp_path / "model.schema.json"
    target.write_text("old", encoding="utf-8")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cli.os, fails, refuse)
    assert run(capsys, "schema", "-o", target) == (1, f"cannot write {target}: {reason}")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.schema.json"]  # no temp file


def test_schema_replaces_a_file_whole(tmp_path, capsys):
    target = tmp_path / "model.schema.json"
    target.write_text("old", encoding="utf-8")
    assert run(capsys, "schema", "-o", target) == (0, f"wrote {target}")
    assert target.read_text(encoding="utf-8").startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.schema.json"]


# --- train: save targets ----------------------------------------------------------------------


def test_train_into_a_folder_or_a_fifo_is_refused_before_training(files, tmp_path, capsys):
    status, text = run(capsys, "train", files["decoder.yaml"], "--steps", "1", "--out", tmp_path)
    assert (status, text) == (1, f"cannot save to {tmp_path}: it is a folder; give a file name")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    status, text = run(capsys, "train", files["decoder.yaml"], "--steps", "1", "--out", fifo)
    assert (status, text) == (1, f"cannot save to {fifo}: it is not a regular file")


@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    OSError(errno.EROFS, "Read-only file system"),
])
def test_train_whose_save_fails_keeps_the_old_file(files, tmp_path, capsys, monkeypatch, error):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("txblocks.checkpoint.save_file", fail)
    status, text = run(capsys, "train", files["train.yaml"], "--task", "copy", "--steps", "1",
                       "--batch-size", "2", "--threads", "1", "--out", out)
    assert status == 1
    assert text.endswith(f"cannot save to {out}: {error}; the file there (if any) is unchanged")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize(("flag", "value"), [("--steps", "0"), ("--batch-size", "-1"),
                                              ("--threads", "0"), ("--seed", "x")])
def test_train_refuses_bad_numbers_as_usage_errors(files, capsys, flag, value):
    status, text = run(capsys, "train", files["decoder.yaml"], flag, value)
    assert status == 2
    assert f"txblocks train: error: argument {flag}: " in text


# --- main: txblocks' own errors never become tracebacks ---------------------------------------


@pytest.mark.parametrize("error", [
    PluginError("plugin 'lsh' (txblocks-lsh 0.1): txblocks_register raised KeyError"),
    BuildError("block.ffn: ffn 'boom' failed to build: KeyError: 'x'"),
    SpecError("n_heads: must divide d_model"),
    CheckpointError("m.safetensors", "not a file"),
    KernelUnavailableError("no attention kernel can run this call: eager: ..."),
    TrainError("the loss is nan at step 3"),
    ValueError("input_ids[0, 1] is 300, outside the vocabulary"),
    PermissionError(errno.EACCES, "Permission denied", "/root/spec.yaml"),
])
def test_main_prints_txblocks_errors_in_one_line(capsys, monkeypatch, error):
    def registry():
        raise error

    monkeypatch.setattr(cli, "default_registry", registry)
    status, text = run(capsys, "list")
    assert status == 1
    expected = (f"{error.strerror}: {error.filename}" if isinstance(error, OSError)
                else " ".join(str(error).split()))
    assert text == f"txblocks list: error: {expected}"


def test_main_lets_a_bug_through(monkeypatch):
    def registry():
        raise ZeroDivisionError("a bug in txblocks, not a refused input")

    monkeypatch.setattr(cli, "default_registry", registry)
    with pytest.raises(ZeroDivisionError):
        cli.main(["list"])


# --- Mixture of Experts sizes -----------------------------------------------------------------


def moe_spec(n_layers: int = 2, **moe) -> dict:
    return {**DECODER, "n_layers": n_layers,
            "block": {"ffn": {"type": "moe", "expert": {"type": "mlp", "hidden": 8}, **moe}}}


def test_a_billion_experts_is_refused_at_once(tmp_path, capsys):
    with pytest.raises(SpecError, match=re.escape(
            f"block.ffn.experts: 1,000,000,000 experts; a moe has at most {MAX_EXPERTS:,} "
            "(txblocks.spec.limits.MAX_EXPERTS)")):
        txblocks.load_spec(moe_spec(experts=10**9))
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(moe_spec(experts=10**9)), encoding="utf-8")
    status, text = run(capsys, "summary", path)  # once hung building a billion experts
    assert status == 1 and "block.ffn.experts: 1,000,000,000 experts" in text


def test_top_k_larger_than_experts_is_refused_with_its_path():
    spec = moe_spec(experts=4, top_k=5)
    spec["layers"] = [{"select": [1], "ffn": spec["block"].pop("ffn")}]
    with pytest.raises(SpecError, match=re.escape(
            "layers[0].ffn.top_k: top_k 5 is larger than experts 4; use 1..4")):
        txblocks.load_spec(spec)


def test_experts_over_the_whole_model_are_bounded():
    n_layers = MAX_MODEL_EXPERTS // MAX_EXPERTS + 1
    with pytest.raises(SpecError, match=re.escape(
            f"block.ffn.experts: the model has {n_layers * MAX_EXPERTS:,} routed experts over "
            f"its layers; txblocks builds at most {MAX_MODEL_EXPERTS:,}")):
        txblocks.load_spec(moe_spec(n_layers, experts=MAX_EXPERTS))
    assert txblocks.load_spec(moe_spec(n_layers - 1, experts=MAX_EXPERTS)).n_layers == n_layers - 1
