"""The ``txblocks`` command line: list, validate, summary, schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import txblocks
from txblocks import cli
from txblocks.plugins import default_registry
from txblocks.spec import schema_text
from txblocks.testing.listing import listed_rows

EXAMPLES = Path(__file__).parents[1] / "examples" / "specs"
SPECS = sorted(EXAMPLES.glob("*.yaml"))
GPT2_PARAMETERS = 124_439_808  # GPT-2 small with its head tied to the token embeddings


@pytest.fixture(autouse=True)
def fresh_default_registry():
    """A default registry built for this test (the CLI uses the cached one)."""
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def run(capsys, *argv: str) -> tuple[int, str]:
    status = cli.main(list(argv))
    return status, capsys.readouterr().out


def flat(text: str) -> str:
    """``text`` with every run of whitespace made one space (the console wraps long lines)."""
    return " ".join(text.split())


# --- list -------------------------------------------------------------------------------------


def test_list_everything(capsys):
    status, out = run(capsys, "list")
    assert status == 0
    listed = {(r[0], r[1]) for r in listed_rows(out)}
    registry = default_registry()
    expected = {(e.kind, e.name) for e in registry.entries()}
    assert listed == expected
    kinds = {kind for kind, _ in listed}
    assert {"norm", "ffn", "attention", "mask", "position", "activation", "head"} <= kinds
    owners = {r[1]: r[2] for r in listed_rows(out)}
    assert owners["rmsnorm"].startswith("txblocks")


def test_list_one_kind(capsys):
    status, out = run(capsys, "list", "norm")
    assert status == 0
    table = listed_rows(out)
    assert {r[0] for r in table} == {"norm"}
    assert [r[1] for r in table] == ["layernorm", "rmsnorm"]
    assert all(r[3] for r in table)  # every component has a description


def test_list_with_a_pattern(capsys):
    status, out = run(capsys, "list", "position", "r*")
    assert status == 0
    assert [r[1] for r in listed_rows(out)] == ["relative_bias", "relative_bias_2d", "rope"]


def test_list_with_a_pattern_that_matches_nothing(capsys):
    status, out = run(capsys, "list", "norm", "zzz*")
    assert status == 0
    assert listed_rows(out) == []


def test_list_unknown_kind(capsys):
    status, out = run(capsys, "list", "nroms")
    assert status == 1
    assert "unknown kind 'nroms'" in flat(out)
    kinds = ", ".join(txblocks.default_registry().kinds())
    assert "activation" in kinds and "attention" in kinds and f"kinds: {kinds}" in flat(out)


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: txblocks" in capsys.readouterr().err


# --- validate -------------------------------------------------------------------------------


def test_validate_the_examples(capsys):
    status, out = run(capsys, "validate", *map(str, SPECS))
    assert status == 0
    for path in SPECS:
        assert f"✓ {path}" in out
    assert "✗" not in out


BROKEN = """\
arch: decoder
vocab_size: 64
d_model: 32
n_layers: 2
n_heads: 4
block:
  norm: rmsnrom
  ffn: {type: mlp, hiden: 64}
  attention: {mask: {type: sliding_window, window: 0}}
layers:
  - select: od
    norm: layernorm
"""


def test_validate_a_broken_spec_prints_every_problem(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN, encoding="utf-8")
    status, out = run(capsys, "validate", str(SPECS[0]), str(bad))
    assert status == 1
    assert f"✓ {SPECS[0]}" in out and f"✗ {bad}" in out
    expected = [
        "block.norm.type: unknown type 'rmsnrom'; allowed: layernorm, rmsnorm; "
        "did you mean 'rmsnorm'?",
        "block.ffn.hiden: unknown field 'hiden'; allowed fields: activation, bias, dropout, "
        "hidden, type; did you mean 'hidden'?",
        "block.attention.mask.window: input should be greater than or equal to 1; got 0",
        "layers[0].select: got 'od'; allowed: all, odd, even",
    ]
    for problem in expected:
        assert problem.split(": ")[0] + ": " in out, (problem, out)
        assert problem in flat(out), (problem, out)
    assert "did you mean 'odd'?" in flat(out)


def test_validate_reports_cross_field_problems(capsys, tmp_path):
    bad = tmp_path / "heads.yaml"
    bad.write_text("arch: decoder\nvocab_size: 64\nd_model: 32\nn_layers: 2\nn_heads: 5\n",
                   encoding="utf-8")
    status, out = run(capsys, "validate", str(bad))
    assert status == 1
    assert "n_heads: d_model 32 is not divisible by n_heads 5" in flat(out)


def test_validate_a_missing_file(capsys, tmp_path):
    status, out = run(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert status == 1
    assert "spec file not found" in flat(out)


def test_validate_a_python_tag(capsys, tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"arch: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    status, out = run(capsys, "validate", str(bad))
    assert status == 1 and "unsupported YAML tag" in flat(out)
    assert not marker.exists()


# --- summary -----------------------------------------------------------------------------------


_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def _human(text: str) -> float:
    number, suffix = re.fullmatch(r"([\d.]+)([KMGTP]?)", text).groups()
    return float(number) * _SUFFIX[suffix]


def test_summary_of_gpt2(capsys):
    status, out = run(capsys, "summary", str(EXAMPLES / "gpt2.yaml"), "--seq-len", "16")
    assert status == 0, out
    assert "gpt2 (decoder)" in out
    table = listed_rows(out)
    assert [int(r[0]) for r in table] == list(range(12))
    assert {r[1] for r in table} == {"pre_norm"}
    assert {r[3] for r in table} == {"causal"}
    assert {r[4] for r in table} == {"mlp(hidden=3072)"}
    per_layer = {r[5] for r in table}
    # attention 4·768² + 4·768, mlp 2·768·3072 + 3072 + 768, two norms 4·768: 7,087,872
    assert per_layer == {"7.1M"}

    text = flat(out)
    found = re.search(r"parameters ([\d,]+) \(([\d.]+[KMGTP]?)\)", text)
    assert found, out
    parameters = int(found.group(1).replace(",", ""))
    model = txblocks.build(EXAMPLES / "gpt2.yaml")
    unique = {id(p): p for p in model.parameters()}.values()
    assert parameters == sum(p.numel() for p in unique) == GPT2_PARAMETERS
    # The head is tied: counting it twice would add vocab·d_model.
    tied = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert tied == GPT2_PARAMETERS + 50257 * 768
    assert parameters != tied

    flops = re.search(r"forward FLOPs at batch 1 × 16 tokens: ([\d.]+[KMGTP]?)", text)
    assert flops, out
    measured = _human(flops.group(1))
    estimate = 2 * parameters * 16
    assert measured > 0
    assert estimate / 1.5 < measured < estimate * 1.5, (measured, estimate)
    memory = re.search(r"memory ([\d.]+[KMGTP]?)B", text)
    assert memory and _human(memory.group(1)) == pytest.approx(4 * parameters, rel=0.01)


def test_summary_of_a_broken_spec(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: decoder\nvocab_size: 64\nd_model: 32\nn_layers: 2\nn_heads: 4\n"
                   "block: {ffn: mpl}\n", encoding="utf-8")
    status, out = run(capsys, "summary", str(bad), "--seq-len", "8")
    assert status == 1
    assert "block.ffn.type: unknown type 'mpl'" in flat(out)


def test_summary_of_a_tiny_spec_with_overrides(capsys, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "arch: decoder\nname: tiny\nvocab_size: 64\nmax_seq_len: 32\nd_model: 32\nn_layers: 4\n"
        "n_heads: 4\nlayers:\n  - select: odd\n"
        "    attention: {mask: {type: sliding_window, window: 8}}\n",
        encoding="utf-8")
    status, out = run(capsys, "summary", str(spec), "--seq-len", "8")
    assert status == 0, out
    assert [r[3] for r in listed_rows(out)] == ["causal", "sliding_window(window=8)"] * 2


# --- schema -----------------------------------------------------------------------------------


def test_schema_to_a_file(capsys, tmp_path):
    target = tmp_path / "model.schema.json"
    status, out = run(capsys, "schema", "-o", str(target))
    assert status == 0
    assert f"wrote {target}" in out
    text = target.read_text(encoding="utf-8")
    assert text == schema_text(default_registry())
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["anyOf"][0]["discriminator"]["propertyName"] == "arch"


def test_schema_to_stdout(capsys):
    status, out = run(capsys, "schema")
    assert status == 0
    assert out == schema_text(default_registry())
