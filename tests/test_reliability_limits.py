"""Specs too big to parse, validate or build are refused early, with the numbers, and within
a time limit (an alarm fails any test that would hang)."""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

import txblocks
from txblocks import BuildError, SpecError, cli, load_spec
from txblocks.spec import limits

build_module = importlib.import_module("txblocks.build")  # txblocks.build is the function

BASE: dict[str, Any] = {
    "arch": "decoder", "name": "tiny", "vocab_size": 64, "max_seq_len": 64, "d_model": 32,
    "n_layers": 2, "n_heads": 4,
}


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM after ``seconds``."""
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def yaml_of(spec: dict[str, Any]) -> str:
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in spec.items())


# --- 4. the spec as data ------------------------------------------------------------------------


def test_an_alias_bomb_under_a_string_field_is_refused(registry, gen):
    width = int(torch.randint(8, 12, (), generator=gen))
    levels = "a0: &a0 [" + ", ".join(["lol"] * width) + "]\n"
    for i in range(1, 9):
        levels += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    text = yaml_of(BASE).replace("name: \"tiny\"\n", "") + levels + "name: *a8\n"
    with within(5), pytest.raises(SpecError, match=r"expands to over [\d,]+ values \(YAML "
                                  r"aliases expanded\)"):
        load_spec(text, registry=registry)


def test_a_recursive_alias_is_refused(registry):
    with within(5), pytest.raises(SpecError, match="contains itself"):
        load_spec(yaml_of(BASE) + "layers: &l [*l]\n", registry=registry)


def test_a_spec_over_the_size_limit_is_refused_before_it_is_read(registry, tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    override = '  - {select: 0, norm: rmsnorm}\n'
    path.write_text(yaml_of(BASE) + "layers:\n" + override * (limits.MAX_SPEC_BYTES
                                                              // len(override) + 1))
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read the file"))
    with within(5), pytest.raises(SpecError, match=re.escape(str(path)) + r"(.|\n)*the spec is "
                                  r"1\.0 MB, over the limit of 1\.0 MB"):
        load_spec(path, registry=registry)


@pytest.mark.parametrize("form", ["yaml", "json", "dict"])
def test_deep_nesting_is_refused(registry, tmp_path, form):
    depth = 10_000
    if form == "dict":
        nested: Any = []
        for _ in range(depth):
            nested = [nested]
        source: Any = {**BASE, "layers": nested}
    elif form == "json":
        source = tmp_path / "deep.json"
        source.write_text(json.dumps(BASE)[:-1] + ', "layers": ' + "[" * depth + "]" * depth
                          + "}")
    else:
        source = yaml_of(BASE) + "layers: " + "[" * depth + "]" * depth + "\n"
    with within(10), pytest.raises(SpecError, match=f"nests deeper than {limits.MAX_DEPTH}"):
        load_spec(source, registry=registry)


# --- 3. the size of the model ------------------------------------------------------------------


@pytest.mark.parametrize(("change", "path", "message"), [
    ({"n_layers": 10**9}, "n_layers", r"1,000,000,000 layers; txblocks builds at most 4,096 per "
     r"stack \(txblocks.spec.limits.MAX_LAYERS\); the spec implies at least [\d,]+ parameters, "
     r"[\d.]+ TB in float32"),
    ({"d_model": 10**7, "n_heads": 1}, "d_model", r"the spec implies at least [\d,]+ parameters, "
     r"[\d.]+ PB in float32, over the limit of 10,000,000,000,000 parameters"),
    ({"vocab_size": 10**12}, "vocab_size",
     r"the spec implies at least [\d,]+ parameters, [\d.]+ TB in float32"),
    ({"max_seq_len": 10**12}, "max_seq_len", r"1,000,000,000,000 positions; txblocks builds at "
     r"most 1,073,741,824"),
], ids=["n_layers", "d_model", "vocab_size", "max_seq_len"])
def test_validation_refuses_sizes_no_device_holds(registry, change, path, message):
    with within(5), pytest.raises(SpecError, match=rf"(?m)^  {path}: {message}"):
        load_spec({**BASE, **change}, registry=registry)


@pytest.mark.parametrize("share", [None, 1, 2])
def test_the_parameter_floor_is_below_the_built_model(registry, share):
    """``min_params`` is a lower bound, layers that share one block (ALBERT) included: counted
    once per block, not once per layer."""
    spec = load_spec({**BASE, "n_layers": 4, "share_layers": share and {"groups": share}},
                     registry=registry)
    built = sum(p.numel() for p in txblocks.build(spec, registry=registry).parameters())
    assert limits.min_params(spec) <= built
    per_layer = limits.min_params(load_spec({**BASE, "n_layers": 4}, registry=registry))
    if share:  # the attention term shrinks with the shared blocks
        assert limits.min_params(spec) < per_layer


def too_big_for_cpu() -> dict[str, Any]:
    """A valid spec whose token table alone is twice this machine's memory."""
    memory = build_module.device_memory("cpu")
    assert memory is not None
    return {**BASE, "vocab_size": 2 * memory // (4 * BASE["d_model"])}


def test_build_refuses_what_the_device_cannot_hold_naming_the_spec(registry, tmp_path):
    path = tmp_path / "wide.yaml"
    path.write_text(yaml_of(too_big_for_cpu()))
    with within(10), pytest.raises(BuildError, match=re.escape(f"spec {path} implies ")
                                   + r"[\d,]+ parameters, [\d.]+ [GTP]B in float32 \(parameters "
                                   r"and buffers\), more than cpu can hold \([\d.]+ [GT]B\)(.|\n)*"
                                   r"allow_large=True"):
        txblocks.build(path, registry=registry)


def test_max_params_and_allow_large(registry, gen, monkeypatch):
    spec = load_spec({**BASE, "n_layers": int(torch.randint(1, 4, (), generator=gen))},
                     registry=registry)
    size = build_module.model_size(spec, registry=registry)
    model = txblocks.build(spec, registry=registry)
    assert size.parameters == sum(p.numel() for p in model.parameters())
    with pytest.raises(BuildError, match=re.escape(f"spec 'tiny' implies {size}, over "
                                                   f"max_params={size.parameters - 1:,}")):
        txblocks.build(spec, registry=registry, max_params=size.parameters - 1, allow_large=True)
    txblocks.build(spec, registry=registry, max_params=size.parameters)
    monkeypatch.setattr(build_module, "device_memory", lambda device: size.bytes - 1)
    with pytest.raises(BuildError, match="more than cpu can hold"):
        txblocks.build(spec, registry=registry)
    txblocks.build(spec, registry=registry, allow_large=True)


def test_summary_and_validate_never_traceback_on_huge_specs(tmp_path, capsys):
    specs = [{**BASE, "n_layers": 10**9}, {**BASE, "d_model": 10**7, "n_heads": 1},
             {**BASE, "vocab_size": 10**12}, {**BASE, "max_seq_len": 10**12}, too_big_for_cpu()]
    paths = []
    for i, spec in enumerate(specs):
        paths.append(tmp_path / f"s{i}.yaml")
        paths[-1].write_text(yaml_of(spec))
    for command in ("summary", "validate"):
        args = cli.parser().parse_args([command, *map(str, paths)])
        with within(20):
            status = args.run(args, Console(width=200))
        out = capsys.readouterr().out
        assert status == 1, out
        assert "Traceback" not in out
        assert len(re.findall(r"parameters|positions", out)) >= (5 if command == "summary" else 4)
