"""The mapping engine: rules as data, complete weight coverage, the family registry, imports."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from txblocks.errors import RegistryError
from txblocks.hf import (
    TRANSFORMS,
    HFConversionError,
    HFHead,
    Rule,
    Select,
    builtin_families,
    families,
    from_hf,
    spec_from_hf,
)
from txblocks.hf.bert import BERT
from txblocks.hf.gpt2 import GPT2
from txblocks.hf.weights import copy_weights

transformers = pytest.importorskip("transformers")


def test_importing_txblocks_does_not_import_transformers() -> None:
    code = (
        "import sys, txblocks, txblocks.hf, txblocks.hf.convert; "
        "from txblocks.hf import builtin_families; builtin_families(); "
        "assert 'transformers' not in sys.modules, 'transformers was imported'"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_rule_matches_and_expands_placeholders() -> None:
    rule = Rule(("l.{i}.q.{p}", "l.{i}.k.{p}"), "blocks.{i}.qk.{p}", "concat")
    assert rule.match("blocks.12.qk.bias", "model.") == ["model.l.12.q.bias", "model.l.12.k.bias"]
    assert rule.match("blocks.x.qk.bias") is None
    assert rule.match("blocks.1.qk.bias.extra") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("a.{i}.w", "b.w"), "placeholders"),
        ((("a.w", "b.w"), "c.w", "copy"), "takes 1"),
        (("a.w", "c.w", "concat"), "two or more"),
        (
            ("a.w", "c.w", "rotate"),
            "unknown transform 'rotate'; allowed: copy, transpose, concat, alias, select",
        ),
    ],
)
def test_bad_rules_fail_when_declared(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(*args)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transforms_invert(name: str) -> None:
    transform = TRANSFORMS[name]
    parts = [torch.randn(3, 4)] if transform.arity == 1 else [torch.randn(3, 4), torch.randn(5, 4)]
    if name == "alias":
        parts = [parts[0], parts[0]]
    tx = transform.to_tx(parts)
    back = transform.to_hf(tx, parts)
    assert len(back) == len(parts)
    for a, b in zip(back, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_missing_rule_is_an_error_not_a_random_weight() -> None:
    config = transformers.GPT2Config(
        n_layer=1, n_embd=12, n_head=2, vocab_size=20, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2Model(config)
    incomplete = dataclasses.replace(GPT2, weights=GPT2.weights[:-1])  # no ln_f rule
    model = from_hf(hf)
    with pytest.raises(HFConversionError) as info:
        copy_weights(model, hf, incomplete, incomplete.heads[0], to_hf=False)
    assert [p.path for p in info.value.problems] == ["final_norm.weight", "final_norm.bias"]


def test_an_unread_hf_weight_is_an_error() -> None:
    config = transformers.BertConfig(num_hidden_layers=1, hidden_size=12, num_attention_heads=2,
                                     intermediate_size=8, vocab_size=20)  # fmt: skip
    hf = transformers.BertModel(config)  # with its pooler
    model = from_hf(hf)  # the pooler is skipped on purpose ...
    strict = dataclasses.replace(BERT.heads[0], ignore=())
    with pytest.raises(HFConversionError, match="pooler.dense.weight: HF parameter left unread"):
        copy_weights(model, hf, BERT, strict, to_hf=False)  # ... and only on purpose


def test_builtin_families_have_distinct_names_and_classes() -> None:
    names = [f.name for f in builtin_families()]
    assert names[:11] == ["gpt2", "bert", "roberta", "llama", "mistral", "qwen2", "mixtral", "t5",
                          "t5_encoder", "bart", "vit"]  # fmt: skip
    # the 25 of issue 15; Gemma 2, OLMo 2, UMT5 (and its encoder), ALBERT, CLIP vision, Whisper,
    # BEiT of issue 16
    assert len(set(names)) == len(names) == 44
    classes = [h.hf_class for f in builtin_families() for h in f.heads]
    assert len(set(classes)) == len(classes)
    # one model_type per family, except the T5-style encoder-only classes, families of their
    # own arch (each named <family>_encoder)
    types = [f.model_type for f in builtin_families()]
    shared = sorted(t for t in set(types) if types.count(t) > 1)
    assert shared == ["mt5", "switch_transformers", "t5", "umt5"]
    assert {f"{t}_encoder" for t in shared} <= set(names)
    for family in builtin_families():
        assert family.heads[0].head_type is None  # the base model comes first


def test_the_class_picks_among_families_of_one_model_type() -> None:
    config = transformers.T5Config(d_model=12, d_kv=4, num_heads=2, num_layers=1, d_ff=8,
                                   vocab_size=20)  # fmt: skip
    assert spec_from_hf(config).arch == "seq2seq"  # no architectures: the first family, T5Model
    assert spec_from_hf(config, hf_class="T5EncoderModel").arch == "encoder"
    config.architectures = ["T5EncoderModel"]
    assert spec_from_hf(config).arch == "encoder"


def test_select_rule_reads_one_slice() -> None:
    rule = Rule("l.{i}.experts.w", "blocks.{i}.experts.{e}.w", "select")
    assert rule.match("blocks.2.experts.5.w", "m.") == ["m.l.2.experts.w"]
    assert rule.slice_of("blocks.2.experts.5.w") == 5
    assert rule.match("blocks.2.experts.x.w") is None  # slices are numbered
    assert Rule("a.{i}", "b.{i}").slice_of("b.1") is None
    transposed = Rule("l.{i}.w", "b.{i}.{e}.w", Select(then="transpose"))
    assert transposed.slice_of("b.0.3.w") == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("l.w", "b.w", "select"), r"picks slices by \{e\}, which the txblocks pattern must have"),
        (("l.{e}.w", "b.{e}.w", "select"), r"must use the placeholders \[\]"),
        ((("l.w", "k.w"), "b.{e}.w", "select"), "takes 1 HF name"),
    ],
)
def test_bad_select_rules_fail_when_declared(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(*args)
    with pytest.raises(ValueError, match="then='concat'; allowed: copy, transpose"):
        Select(then="concat")


def test_select_transposes_each_slice() -> None:
    """A stack stored (E, in, out) goes through Select(then="transpose") both ways."""

    class Stacked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 4, 5))

    class Experts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 5, bias=False) for _ in range(3))

    family = dataclasses.replace(
        GPT2, weights=(Rule("w", "experts.{e}.weight", Select(then="transpose")),),
        heads=(HFHead("Stacked", None),),
    )  # fmt: skip
    hf, tx = Stacked(), Experts()
    copy_weights(tx, hf, family, family.heads[0], to_hf=False)
    for e in range(3):
        assert torch.equal(tx.experts[e].weight, hf.w[e].t())
    with torch.no_grad():
        tx.experts[1].weight.mul_(2)
    copy_weights(tx, hf, family, family.heads[0], to_hf=True)
    assert torch.equal(hf.w[1], tx.experts[1].weight.t())


def test_a_plugin_family_may_not_shadow_a_builtin(registry) -> None:
    registry.add("hf_family", "gpt2", GPT2)
    with pytest.raises(RegistryError, match=r"registered twice: by txblocks \(built-in\) and by"):
        families(registry)


def test_a_plugin_family_must_be_a_family(registry) -> None:
    registry.add("hf_family", "odd", lambda config: object())
    with pytest.raises(RegistryError, match="must return an HFFamily named 'odd'"):
        families(registry)
