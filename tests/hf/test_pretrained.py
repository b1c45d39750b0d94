"""Hugging Face folders in and out: ``from_pretrained`` / ``save_pretrained`` / ``convert``.

Tiny random models of each family, every parameter perturbed, saved by ``transformers``'
own ``save_pretrained`` with a small ``max_shard_size`` so that they are really sharded.
``from_pretrained`` must give the model ``from_hf`` gives (same spec, origin, and the very
same logits), and ``save_pretrained`` a folder ``transformers`` loads with the logits of
the original model and the tensor names of its own ``save_pretrained``. Broken folders
give one ``HFConversionError`` listing every problem.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from safetensors.torch import load_file, save_file
from txblocks.hf import (
    HFConversionError,
    convert_checkpoint,
    from_hf,
    from_pretrained,
    save_pretrained,
)
from txblocks.hf.shards import INDEX, WEIGHTS

from .conftest import perturbed

VOCAB = 97
IDS = {"bos_token_id": 0, "eos_token_id": 0}


def _make(cls: str, config: str, **kw: Any) -> Callable[[], Any]:
    return lambda: getattr(transformers, cls)(getattr(transformers, config)(**kw))


LLAMA = {"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
         "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": VOCAB,
         "max_position_embeddings": 64, **IDS}  # fmt: skip
T5 = {"d_model": 48, "num_heads": 6, "d_kv": 8, "num_layers": 2, "num_decoder_layers": 3,
      "d_ff": 64, "vocab_size": VOCAB, "decoder_start_token_id": 0}  # fmt: skip


def _untied_t5() -> Any:
    """T5 v1.1 as ``from_pretrained`` leaves it: ``lm_head`` not tied to ``shared``."""
    model = _make("T5ForConditionalGeneration", "T5Config", tie_word_embeddings=False,
                  feed_forward_proj="gated-gelu", **T5)()  # fmt: skip
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    return model


# id -> factory of the HF model
CASES: dict[str, Callable[[], Any]] = {
    "gpt2-lm": _make("GPT2LMHeadModel", "GPT2Config", n_layer=2, n_embd=48, n_head=6,
                     vocab_size=VOCAB, n_positions=40, **IDS),
    "gpt2-base": _make("GPT2Model", "GPT2Config", n_layer=2, n_embd=48, n_head=6,
                       vocab_size=VOCAB, n_positions=40, **IDS),
    "llama-gqa-untied": _make("LlamaForCausalLM", "LlamaConfig", **LLAMA),
    "llama-gqa-tied": _make("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=True, **LLAMA),
    "bert-mlm": _make("BertForMaskedLM", "BertConfig", num_hidden_layers=2, hidden_size=48,
                      num_attention_heads=6, intermediate_size=72, vocab_size=VOCAB,
                      max_position_embeddings=40, pad_token_id=1),
    "bert-base": _make("BertModel", "BertConfig", num_hidden_layers=2, hidden_size=48,
                       num_attention_heads=6, intermediate_size=72, vocab_size=VOCAB,
                       max_position_embeddings=40, pad_token_id=1),
    "t5-tied-scaled": _make("T5ForConditionalGeneration", "T5Config", **T5),
    "t5-v1.1-untied": _untied_t5,
    "bart": _make("BartForConditionalGeneration", "BartConfig", d_model=48,
                  encoder_attention_heads=6, decoder_attention_heads=6, encoder_layers=1,
                  decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB,
                  max_position_embeddings=40),
    "mixtral": _make("MixtralForCausalLM", "MixtralConfig", num_local_experts=4,
                     num_experts_per_tok=2, **LLAMA),
}  # fmt: skip


def _inputs(hf: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 11), generator=g)
    out = {"input_ids": ids}
    if hf.config.is_encoder_decoder:
        out["decoder_input_ids"] = torch.randint(2, VOCAB, (2, 7), generator=g)
    return out


def _final(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return out.last_hidden_state if logits is None else logits


def _run(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, transformers.PreTrainedModel):
            return _final(model(**inputs))
        return _final(model(**inputs)) if len(inputs) > 1 else _final(model(inputs["input_ids"]))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """Each case's perturbed HF model and the folder transformers saved it to (sharded)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case, factory in CASES.items():
        hf = perturbed(factory)
        hf.save_pretrained(root / case, max_shard_size="40KB")
        out[case] = (hf, root / case)
    return out


def _weight_names(folder: Path) -> set[str]:
    if (folder / INDEX).is_file():
        return set(json.loads((folder / INDEX).read_text())["weight_map"])
    return set(load_file(folder / WEIGHTS))


@pytest.mark.parametrize("case", list(CASES))
def test_from_pretrained_is_from_hf(case: str, folders: dict[str, tuple[Any, Path]]) -> None:
    hf, folder = folders[case]
    shards = json.loads((folder / INDEX).read_text())["weight_map"].values()
    assert len(set(shards)) > 1  # really sharded

    model = from_pretrained(folder)
    reference = from_hf(hf)
    assert model.spec.model_copy(update={"name": ""}) == reference.spec.model_copy(
        update={"name": ""})
    assert model.spec.name == str(folder)  # config.name_or_path, as from_hf of a loaded model
    assert model.hf_origin == reference.hf_origin
    assert not model.training
    assert model.tokenizer_path is None
    assert all(not p.is_meta for p in model.parameters())
    tied = [p for p in model.parameters()]
    assert len(tied) == len(list(reference.parameters()))  # the same ties
    inputs = _inputs(hf)
    y = _run(model, inputs)
    torch.testing.assert_close(y, _run(reference, inputs), rtol=0, atol=0)
    torch.testing.assert_close(y, _run(hf, inputs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_save_pretrained_loads_in_transformers(
    case: str, folders: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    hf, folder = folders[case]
    model = from_pretrained(folder)
    files = save_pretrained(model, tmp_path, max_shard_size="30KB")
    assert INDEX in files and len(files) > 3
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [type(hf).__name__]
    # as transformers saves it (BertModel's pooler, which txblocks has not, aside)
    assert _weight_names(tmp_path) == {n for n in _weight_names(folder) if "pooler." not in n}
    auto = transformers.AutoModel if hf.base_model is hf and not hf.config.is_encoder_decoder \
        else type(hf)  # fmt: skip
    back = auto.from_pretrained(tmp_path).eval()
    assert type(back) is type(hf)
    inputs = _inputs(hf)
    torch.testing.assert_close(_run(back, inputs), _run(hf, inputs), rtol=0, atol=0)


def test_auto_class_loads_a_causal_lm(folders: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    hf, folder = folders["llama-gqa-untied"]
    txblocks.save_pretrained(txblocks.from_pretrained(folder), tmp_path)
    assert (tmp_path / WEIGHTS).is_file() and not (tmp_path / INDEX).exists()  # one file
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = _inputs(hf)
    torch.testing.assert_close(_run(back, inputs), _run(hf, inputs), rtol=0, atol=0)


def test_a_built_model_goes_out_and_back(tmp_path: Path) -> None:
    model = txblocks.build("examples/specs/gpt-tiny.yaml").eval()
    save_pretrained(model, tmp_path, max_shard_size=100_000)
    back = from_pretrained(tmp_path)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_a_second_save_replaces_the_shards(folders: dict[str, tuple[Any, Path]],
                                           tmp_path: Path) -> None:
    model = from_pretrained(folders["gpt2-lm"][1])
    save_pretrained(model, tmp_path, max_shard_size="20KB")
    save_pretrained(model, tmp_path, max_shard_size="10MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS]


def test_dtype_defaults_to_the_config(tmp_path: Path) -> None:
    hf = perturbed(CASES["llama-gqa-untied"]).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model = from_pretrained(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in from_pretrained(tmp_path, dtype=torch.float32).parameters()} == {
        torch.float32
    }
    ids = _inputs(hf)
    torch.testing.assert_close(_run(model, ids), _run(from_hf(hf), ids), rtol=0, atol=0)
    out = tmp_path / "out"
    save_pretrained(model, out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(out / WEIGHTS).values()} == {torch.bfloat16}


def test_the_tokenizer_is_kept_and_saved(folders: dict[str, tuple[Any, Path]],
                                         tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(folders["gpt2-lm"][1], folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "tokenizer_config.json").write_text("{}")
    model = txblocks.from_pretrained(folder)
    assert model.tokenizer_path == str(folder / "tokenizer.json")
    files = save_pretrained(model, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    assert "config.json" in files


def test_convert_both_ways(folders: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    hf, folder = folders["t5-v1.1-untied"]
    summary = convert_checkpoint(folder, tmp_path / "t5.safetensors")
    assert "T5ForConditionalGeneration" in summary
    model = txblocks.load(tmp_path / "t5.safetensors")
    inputs = _inputs(hf)
    torch.testing.assert_close(_run(model, inputs), _run(hf, inputs), rtol=0, atol=1e-4)
    convert_checkpoint(tmp_path / "t5.safetensors", tmp_path / "back", max_shard_size="50KB")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["decoder_start_token_id"] == 0  # carried by the file's hf_origin
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    torch.testing.assert_close(_run(back, inputs), _run(hf, inputs), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        convert_checkpoint(tmp_path / "nothing", tmp_path / "x")


def test_sinusoidal_buffers_are_computed(tmp_path: Path) -> None:
    """Buffers no checkpoint holds (non-persistent) are computed as ``build`` does."""
    from txblocks.build import build, build_on_meta
    from txblocks.hf.pretrained import _real_buffers

    spec = txblocks.load_spec("examples/specs/gpt-tiny.yaml").model_dump(mode="json")
    spec["position"] = {"type": "sinusoidal"}
    meta = build_on_meta(spec)
    assert any(b.is_meta for b in meta.buffers())
    _real_buffers(meta, torch.device("cpu"), torch.float32, None)
    expected = dict(build(spec).named_buffers())
    got = dict(meta.named_buffers())
    assert got.keys() == expected.keys() and got
    for name, buffer in got.items():
        torch.testing.assert_close(buffer, expected[name], rtol=0, atol=0)
    assert all(p.is_meta for p in meta.parameters())  # parameters untouched


# --- broken folders: one error, every problem -----------------------------------------------


@pytest.fixture()
def llama(folders: dict[str, tuple[Any, Path]], tmp_path: Path) -> Path:
    """A writable copy of the sharded Llama folder."""
    folder = tmp_path / "llama"
    shutil.copytree(folders["llama-gqa-untied"][1], folder)
    return folder


def _shard_of(folder: Path, tensor: str) -> Path:
    return folder / json.loads((folder / INDEX).read_text())["weight_map"][tensor]


def _problems(folder: Path) -> list[str]:
    with pytest.raises(HFConversionError) as info:
        from_pretrained(folder)
    assert str(folder) in str(info.value)
    return [str(p) for p in info.value.problems]


def _rewrite(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_missing_shard_and_a_truncated_one_are_both_listed(llama: Path) -> None:
    missing = _shard_of(llama, "model.layers.1.mlp.down_proj.weight")
    truncated = _shard_of(llama, "model.embed_tokens.weight")
    missing.unlink()
    truncated.write_bytes(truncated.read_bytes()[:-100])
    problems = _problems(llama)
    assert any(p.startswith(f"{missing.name}: not found") for p in problems), problems
    assert any(p.startswith(f"{truncated.name}: not a readable safetensors file") for p in problems)
    # and the model's tensors they held, by name
    assert any("model.layers.1.mlp.down_proj.weight not found" in p for p in problems)
    assert any("model.embed_tokens.weight not found" in p for p in problems)


def test_a_missing_tensor_and_a_wrong_shape(llama: Path) -> None:
    _rewrite(_shard_of(llama, "model.norm.weight"), lambda t: t.pop("model.norm.weight"))
    q = "model.layers.0.self_attn.q_proj.weight"
    _rewrite(_shard_of(llama, q), lambda t: t.update({q: torch.zeros(48, 40)}))
    problems = _problems(llama)
    assert any("model.norm.weight: listed in" in p and "does not hold it" in p for p in problems)
    assert any(p.startswith("final_norm.weight: HF parameter(s) model.norm.weight not found")
               for p in problems), problems
    assert any(p.startswith("blocks.0.attention.qkv.weight: HF shapes (48, 40), (16, 48)")
               for p in problems), problems
    o = "model.layers.1.self_attn.o_proj.weight"
    _rewrite(_shard_of(llama, o), lambda t: t.update({o: torch.zeros(48, 40)}))
    assert "blocks.1.attention.out.weight: shape (48, 40) does not fit (48, 48) " \
        f"({o})" in _problems(llama)


def test_extra_tensors_are_listed(llama: Path) -> None:
    name = "model.layers.0.mlp.gate_proj.weight"
    _rewrite(_shard_of(llama, name), lambda t: t.update({"model.layers.9.extra": torch.ones(3)}))
    index = json.loads((llama / INDEX).read_text())
    index["weight_map"]["model.layers.9.extra"] = _shard_of(llama, name).name
    (llama / INDEX).write_text(json.dumps(index))
    assert "model.layers.9.extra: HF parameter left unread" in _problems(llama)


def test_a_config_that_is_not_json_and_a_missing_shard(llama: Path) -> None:
    (llama / "config.json").write_text("{not json")
    _shard_of(llama, "model.norm.weight").unlink()
    problems = _problems(llama)
    assert any(p.startswith("config.json: ") for p in problems), problems
    assert any(": not found (the index lists" in p for p in problems), problems


@pytest.mark.parametrize("model_type", ["no_such_model", "fnet"])
def test_unknown_model_types(llama: Path, model_type: str) -> None:
    config = json.loads((llama / "config.json").read_text())
    config["model_type"] = model_type
    (llama / "config.json").write_text(json.dumps(config))
    problems = _problems(llama)
    assert len(problems) == 1, problems
    assert problems[0].startswith(("config.json: ", "model_type: ")), problems
    if model_type == "fnet":  # transformers knows it, txblocks does not: the supported ones
        assert "supported: " in problems[0] and "llama" in problems[0]


def test_a_config_of_another_size(llama: Path) -> None:
    """Weights of a 2-layer model under the config of a 3-layer one (and wider heads)."""
    config = json.loads((llama / "config.json").read_text())
    config.update(num_hidden_layers=3, intermediate_size=80)
    (llama / "config.json").write_text(json.dumps(config))
    problems = _problems(llama)
    assert any(p.startswith("blocks.2.") and "not found" in p for p in problems), problems
    assert any("ffn.gate_up.weight: shape" in p for p in problems), problems


def test_no_weights_names_pickle_files(tmp_path: Path) -> None:
    hf = perturbed(CASES["gpt2-lm"])
    hf.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    problems = _problems(tmp_path)
    assert len(problems) == 1 and "pytorch_model.bin" in problems[0] and "pickle" in problems[0]


def test_not_a_folder(tmp_path: Path) -> None:
    assert _problems(tmp_path / "absent") == [f"{tmp_path / 'absent'}: not found"]


def test_an_index_pointing_outside_the_folder(llama: Path) -> None:
    index = json.loads((llama / INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    (llama / INDEX).write_text(json.dumps(index))
    assert any("outside the folder" in p for p in _problems(llama))


def test_unsupported_options_are_listed(llama: Path) -> None:
    config = json.loads((llama / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}
    (llama / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFConversionError, match="unsupported options") as info:
        from_pretrained(llama)
    assert any("rope" in p.path for p in info.value.problems)


def test_a_plugin_family(registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A family registered under ``hf_family`` reads and writes folders like a built-in
    (its classes found where ``to_hf`` finds them: in the ``transformers`` namespace)."""
    import dataclasses

    from txblocks.hf import HFHead, Rule
    from txblocks.hf.gpt2 import GPT2

    class ToyConfig(transformers.GPT2Config):
        model_type = "toy_gpt2_pretrained"

    class ToyLMHeadModel(transformers.GPT2LMHeadModel):
        config_class = ToyConfig

    def expose() -> None:  # building a model may put a new module under sys.modules
        for cls in (ToyConfig, ToyLMHeadModel):
            monkeypatch.setattr(sys.modules["transformers"], cls.__name__, cls, raising=False)

    if ToyConfig.model_type not in transformers.CONFIG_MAPPING:
        transformers.AutoConfig.register(ToyConfig.model_type, ToyConfig)
    lm = GPT2.heads[1]
    toy = dataclasses.replace(
        GPT2, name="toy", model_type=ToyConfig.model_type, config_class="ToyConfig",
        heads=(HFHead("ToyLMHeadModel", "lm", spec=lm.spec, config=lm.config,
                      weights=(Rule("lm_head.weight", "head.proj.weight"),)),),
    )  # fmt: skip
    registry.add("hf_family", "toy", toy)
    hf = perturbed(lambda: ToyLMHeadModel(ToyConfig(n_layer=1, n_embd=12, n_head=2, **IDS,
                                                    vocab_size=VOCAB)))  # fmt: skip
    hf.save_pretrained(tmp_path / "in", max_shard_size="2KB")
    expose()
    model = from_pretrained(tmp_path / "in", registry=registry)
    assert model.hf_origin.family == "toy"
    inputs = _inputs(hf)
    torch.testing.assert_close(_run(model, inputs), _run(from_hf(hf, registry=registry), inputs),
                               rtol=0, atol=0)  # fmt: skip
    expose()
    save_pretrained(model, tmp_path / "out", registry=registry, max_shard_size="2KB")
    back = ToyLMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_run(back, inputs), _run(hf, inputs), rtol=0, atol=0)
