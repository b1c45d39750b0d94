"""Safe checkpoints: safetensors + spec in the header, tied weights, atomic writes, errors."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import save_file, save_model

import txblocks
from txblocks import ComponentConfig, SpecError
from txblocks import checkpoint as ckpt
from txblocks.checkpoint import CheckpointError, LoadReport, Mismatch, load, load_weights, save
from txblocks.spec.io import PRESETS_DIR, preset_names

DECODER: dict[str, Any] = {
    "arch": "decoder", "vocab_size": 50, "d_model": 32, "n_layers": 2, "n_heads": 4,
    "max_seq_len": 16,
}
ENCODER: dict[str, Any] = {
    "arch": "encoder", "vocab_size": 50, "d_model": 32, "n_layers": 2, "n_heads": 4,
    "max_seq_len": 16, "embedding": {"token_types": 2}, "head": "mlm",
}
UNTIED: dict[str, Any] = {**DECODER, "head": {"type": "lm", "tie_embeddings": False}}
SPECS = {"decoder_tied": DECODER, "encoder_mlm": ENCODER, "decoder_untied": UNTIED}
TIED = {"decoder_tied": "head.proj.weight", "encoder_mlm": "head.decoder.proj.weight"}


def randomize(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Every parameter random (norm weights and biases too), so nothing loads by luck."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def make(spec: dict[str, Any], registry, gen) -> txblocks.TransformerModel:
    return randomize(txblocks.build(spec, registry=registry), gen)


def inputs(spec: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, spec["vocab_size"], (2, 9), generator=gen)
    out = {"input_ids": ids}
    if spec["arch"] == "encoder":
        out["token_type_ids"] = torch.randint(0, 2, ids.shape, generator=gen)
    return out


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", list(SPECS))
def test_round_trip_gives_identical_logits(registry, gen, tmp_path, which):
    spec = SPECS[which]
    model = make(spec, registry, gen)
    path = tmp_path / "m.safetensors"
    save(model, path)
    loaded = load(path, registry=registry)
    assert not loaded.training
    assert loaded.spec == model.spec
    x = inputs(spec, gen)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


@pytest.mark.parametrize("which", list(TIED))
def test_tied_head_is_stored_once_and_tied_again(registry, gen, tmp_path, which):
    model = make(SPECS[which], registry, gen)
    path = tmp_path / "m.safetensors"
    save(model, path)
    tensors, meta = tensors_and_metadata(path)
    head = TIED[which]
    assert head not in tensors and "embeddings.tokens.weight" in tensors
    assert json.loads(meta["txblocks.aliases"]) == {head: "embeddings.tokens.weight"}
    loaded = load(path, registry=registry)
    embedding, projection = loaded.embeddings.tokens.weight, loaded.get_parameter(head)
    assert embedding.data_ptr() == projection.data_ptr()
    row, col = torch.randint(0, 32, (2,), generator=gen).tolist()
    with torch.no_grad():
        embedding[row, col] += 1.0
    expected = model.get_parameter(head).detach().clone()
    expected[row, col] += 1.0
    assert torch.equal(projection, expected)


def test_untied_head_stays_untied(registry, gen, tmp_path):
    model = make(UNTIED, registry, gen)
    save(model, tmp_path / "m.safetensors")
    tensors, meta = tensors_and_metadata(tmp_path / "m.safetensors")
    assert "head.proj.weight" in tensors and json.loads(meta["txblocks.aliases"]) == {}
    loaded = load(tmp_path / "m.safetensors", registry=registry)
    assert loaded.head.proj.weight.data_ptr() != loaded.embeddings.tokens.weight.data_ptr()
    assert torch.equal(loaded.head.proj.weight, model.head.proj.weight)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_round_trips_at_a_tiny_size(registry, gen, tmp_path, preset):
    """Seq2seq, ViT and MoE models too: every tensor back, and the same storages shared."""
    tiny: dict[str, Any] = {"extends": preset, "d_model": 32, "n_heads": 4, "n_layers": 2}
    raw = yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text("utf-8"))
    tiny |= {"n_kv_heads": 2} if "n_kv_heads" in raw else {}
    tiny |= {"vocab_size": 50} if raw.get("arch") != "vit" else {}
    model = make(tiny, registry, gen)
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", registry=registry)
    assert type(loaded) is type(model) and loaded.spec == model.spec
    state, again = model.state_dict(), loaded.state_dict()
    assert again.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(again[name], value), name

    def storages(sd: dict[str, torch.Tensor]) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for name, value in sd.items():
            groups.setdefault(value.data_ptr(), []).append(name)
        return sorted(groups.values())

    assert storages(again) == storages(state)


def test_aliases_feed_every_name_of_an_untied_model(registry, gen, tmp_path):
    """The file stores the tied head once; a model with its own head gets it from the alias."""
    model = make(DECODER, registry, gen)
    save(model, tmp_path / "m.safetensors")
    target = make(UNTIED, registry, gen)
    assert load_weights(target, tmp_path / "m.safetensors") == LoadReport()
    assert torch.equal(target.head.proj.weight, model.embeddings.tokens.weight)
    assert target.head.proj.weight.data_ptr() != target.embeddings.tokens.weight.data_ptr()


def test_load_in_bfloat16(registry, gen, tmp_path):
    model = make(DECODER, registry, gen)
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", dtype=torch.bfloat16, registry=registry)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.head.proj.weight.data_ptr() == loaded.embeddings.tokens.weight.data_ptr()
    reference = copy.deepcopy(model).to(torch.bfloat16)
    x = inputs(DECODER, gen)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, reference(**x).logits)
    # saved in bf16, loaded without dtype=: stays bf16
    save(loaded, tmp_path / "bf16.safetensors")
    again = load(tmp_path / "bf16.safetensors", registry=registry)
    assert again.embeddings.tokens.weight.dtype == torch.bfloat16
    assert torch.equal(again.embeddings.tokens.weight, reference.embeddings.tokens.weight)


def test_other_dtypes_in_the_file_are_converted(registry, gen, tmp_path):
    model = make(DECODER, registry, gen)
    save(model, tmp_path / "m.safetensors")
    tensors, meta = tensors_and_metadata(tmp_path / "m.safetensors")
    del meta[ckpt.CHECKSUMS_KEY]  # converted by another tool: the checksums are of the old bytes
    save_file({k: v.double() for k, v in tensors.items()}, tmp_path / "f64.safetensors", meta)
    with pytest.warns(UserWarning, match="no txblocks.checksums"):
        loaded = load(tmp_path / "f64.safetensors", dtype=torch.float32, registry=registry)
    assert loaded.embeddings.tokens.weight.dtype == torch.float32
    x = inputs(DECODER, gen)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
    target = txblocks.build(DECODER, registry=registry)
    with pytest.warns(UserWarning, match="no txblocks.checksums"):
        assert load_weights(target, tmp_path / "f64.safetensors") == LoadReport()
    assert torch.equal(target.blocks[1].attention.out.weight, model.blocks[1].attention.out.weight)


def test_non_persistent_buffers_are_not_saved(registry, gen, tmp_path):
    spec = {**DECODER, "position": "sinusoidal"}
    model = make(spec, registry, gen)
    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    assert transient  # the sinusoidal table
    save(model, tmp_path / "m.safetensors")
    tensors, _ = tensors_and_metadata(tmp_path / "m.safetensors")
    assert not transient & set(tensors)
    loaded = load(tmp_path / "m.safetensors", registry=registry)
    x = inputs(spec, gen)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)


def test_file_is_plain_safetensors_without_pickle(registry, gen, tmp_path, monkeypatch):
    model = make(DECODER, registry, gen)
    path = tmp_path / "m.safetensors"
    save(model, path, metadata={"run": "r1", "step": "100"})
    raw = path.read_bytes()
    assert not raw.startswith((b"PK", b"\x80"))  # neither torch.save's zip nor a pickle
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    assert meta["txblocks.format"] == str(ckpt.FORMAT)
    assert meta["txblocks.version"] == txblocks.__version__
    assert meta["run"] == "r1" and meta["step"] == "100"
    assert txblocks.load_spec(json.loads(meta["txblocks.spec"]), registry=registry) == model.spec
    assert set(header) == set(tensors_and_metadata(path)[0])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle used")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"),
                        (pickle, "Unpickler")):
        monkeypatch.setattr(owner, name, refuse)
    load(path, registry=registry)


def test_raw_safetensors_files_load_with_load_weights(registry, gen, tmp_path):
    model = make(DECODER, registry, gen)
    save_model(model, str(tmp_path / "raw.safetensors"))  # drops the tied head
    target = txblocks.build(DECODER, registry=registry).eval()
    assert load_weights(target, tmp_path / "raw.safetensors") == LoadReport()
    x = inputs(DECODER, gen)
    with torch.no_grad():
        assert torch.equal(target(**x).logits, model(**x).logits)


# --- errors ---------------------------------------------------------------------------------


def test_missing_file(registry, tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors.*\n.*file not found"):
        load(tmp_path / "nope.safetensors", registry=registry)
    with pytest.raises(CheckpointError, match="file not found"):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "nope.safetensors")


@pytest.fixture
def saved(registry, gen, tmp_path) -> tuple[txblocks.TransformerModel, Path]:
    model = make(DECODER, registry, gen)
    save(model, tmp_path / "m.safetensors")
    return model, tmp_path / "m.safetensors"


def corrupt(path: Path, how: str, gen: torch.Generator) -> None:
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    cut = int(torch.randint(1, len(raw) - 8 - n, (), generator=gen))
    if how == "truncated":
        raw = raw[:-cut]
    elif how == "flipped_header":
        raw[int(torch.randint(8, 8 + n, (), generator=gen))] ^= 0xFF  # ASCII -> invalid UTF-8
    elif how == "bad_length":
        raw[:8] = (n + cut).to_bytes(8, "little")
    else:
        raw = bytearray(b"model weights, trust me\n" * 3)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "flipped_header", "bad_length", "text"])
def test_corrupted_files(registry, gen, saved, how):
    model, path = saved
    corrupt(path, how, gen)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*\n.*not a safetensors "
                       "file, or its header is corrupted"):
        load(path, registry=registry)
    with pytest.raises(CheckpointError, match="header is corrupted"):
        load_weights(model, path)


def test_file_without_spec_points_to_load_weights(registry, gen, tmp_path):
    save_model(make(DECODER, registry, gen), str(tmp_path / "raw.safetensors"))
    with pytest.raises(CheckpointError, match=r"no txblocks.spec .*txblocks.save\? use "
                       r"txblocks.load_weights\(model, path\)"):
        load(tmp_path / "raw.safetensors", registry=registry)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("txblocks.format", "2", "txblocks.format is '2'; this txblocks reads formats 1 to 1"),
    ("txblocks.spec", "{not json", "txblocks.spec is not valid JSON"),
    ("txblocks.aliases", "[1, 2]", "txblocks.aliases must be a JSON object"),
])
def test_bad_txblocks_metadata(registry, saved, key, value, message):
    _, path = saved
    tensors, meta = tensors_and_metadata(path)
    save_file(tensors, path, {**meta, key: value})
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load(path, registry=registry)


class ScaleNormConfig(ComponentConfig):
    eps: float = Field(1e-5, gt=0)


class ScaleNorm(torch.nn.Module):
    def __init__(self, dim: int, config: ScaleNormConfig) -> None:
        super().__init__()
        self.eps, self.g = config.eps, torch.nn.Parameter(torch.tensor(dim**0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


def test_spec_naming_a_plugin_that_is_not_installed(registry, gen, tmp_path):
    with_plugin = txblocks.load_registry(autoload=False)
    with_plugin.add("norm", "scalenorm", ScaleNorm, ScaleNormConfig)
    spec = {**DECODER, "block": {"norm": {"type": "scalenorm", "eps": 1e-6}}}
    model = make(spec, with_plugin, gen)
    path = tmp_path / "plugin.safetensors"
    save(model, path)
    expected = (re.escape(str(path)) + r"[^\n]*\n *spec block.norm.type: unknown type "
                r"'scalenorm'(.|\n)*plugin that is not installed")
    with pytest.raises(CheckpointError, match=expected) as exc:
        load(path, registry=registry)
    assert isinstance(exc.value.__cause__, SpecError)
    loaded = load(path, registry=with_plugin)
    x = inputs(spec, gen)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)


MISSING, MISMATCHED = "blocks.1.attention.out.weight", "blocks.0.attention.qkv.weight"


def damaged_copy(source: Path, dest: Path) -> None:
    """``source`` with one tensor gone, one extra, one transposed; the spec kept."""
    tensors, meta = tensors_and_metadata(source)
    del tensors[MISSING]
    tensors["extra.weight"] = torch.zeros(3)
    tensors[MISMATCHED] = tensors[MISMATCHED].T.contiguous()
    save_file(tensors, dest, meta)


def test_every_key_problem_is_listed_at_once(registry, saved, tmp_path):
    _, path = saved
    damaged_copy(path, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"bad.safetensors \(3 problems\)") as exc:
        load(tmp_path / "bad.safetensors", registry=registry)
    assert exc.value.problems == [
        f"missing from the file: {MISSING}",
        "unexpected in the file (no such model entry): extra.weight",
        f"shape mismatch for {MISMATCHED}: the model expects (96, 32), the file has (32, 96)",
    ]


def test_failed_strict_load_changes_nothing(registry, gen, saved, tmp_path):
    _, path = saved
    damaged_copy(path, tmp_path / "bad.safetensors")
    target = make(DECODER, registry, gen)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="3 problems"):
        load_weights(target, tmp_path / "bad.safetensors")
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_partial_load_reports_exactly_what_did_not_load(registry, gen, saved, tmp_path):
    model, path = saved
    damaged_copy(path, tmp_path / "bad.safetensors")
    target = make(DECODER, registry, gen)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_weights(target, tmp_path / "bad.safetensors", strict=False)
    assert report == LoadReport(missing=[MISSING], unexpected=["extra.weight"],
                                mismatched=[Mismatch(MISMATCHED, (96, 32), (32, 96))])
    for name, value in target.state_dict().items():
        expected = before[name] if name in (MISSING, MISMATCHED) else model.state_dict()[name]
        assert torch.equal(value, expected), name
    with pytest.warns(UserWarning, match=f"strict=False.*missing from the file: {MISSING}"):
        load(tmp_path / "bad.safetensors", registry=registry, strict=False)


def test_save_needs_a_spec(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot save(.|\n)*Linear has no .spec(.|\n)*"
                       r"save_model\(model, path\) and txblocks.load_weights"):
        save(torch.nn.Linear(3, 3), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_save_checks_metadata(registry, gen, tmp_path):
    model = make(DECODER, registry, gen)
    with pytest.raises(CheckpointError, match=r"2 problems(.|\n)*'txblocks.spec' is reserved"
                       r"(.|\n)*'step': 3 is not"):
        save(model, tmp_path / "m.safetensors", metadata={"txblocks.spec": "{}", "step": 3})


# --- atomic writes --------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [True, False])
def test_failed_save_leaves_the_old_file(registry, gen, tmp_path, monkeypatch, existing):
    path = tmp_path / "m.safetensors"
    if existing:
        save(make(DECODER, registry, gen), path)
    before = path.read_bytes() if existing else None

    def half_written(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        save(make(UNTIED, registry, gen), path)
    assert sorted(tmp_path.iterdir()) == ([path] if existing else [])
    if existing:
        assert path.read_bytes() == before
        load(path, registry=registry)


def test_save_replaces_an_existing_file(registry, gen, tmp_path):
    path = tmp_path / "m.safetensors"
    save(make(DECODER, registry, gen), path)
    second = make(UNTIED, registry, gen)
    save(second, path)
    assert sorted(tmp_path.iterdir()) == [path]
    assert torch.equal(load(path, registry=registry).head.proj.weight, second.head.proj.weight)
