"""The front_end kind: tokens and patches (issue 16, item 4), and inputs_embeds on every arch.

A spec that names its architecture's own front end builds the same parameters and gives the
same numbers as one that names none; ``inputs_embeds`` equal to the token table's rows give
the same output as the ids; the patches' norm is a LayerNorm over every token (CLIP).
"""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.errors import BuildError

TEXT = {"vocab_size": 40, "d_model": 16, "n_layers": 2, "n_heads": 2, "max_seq_len": 32}
VIT = {"arch": "vit", "image_size": [8, 12], "patch_size": 4, "d_model": 16, "n_layers": 2,
       "n_heads": 2, "head": {"type": "classifier", "n_classes": 3}}


def _build(registry, spec):
    torch.manual_seed(0)
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def test_front_end_is_a_registered_kind(registry):
    assert {"tokens", "patches"} <= set(registry.names("front_end"))


@pytest.mark.parametrize("spec,front_end", [
    ({"arch": "decoder", **TEXT, "embedding": {"scale": 2.0}}, "tokens"),
    ({"arch": "encoder", **TEXT, "embedding": {"token_types": 2, "norm": "layernorm"}}, "tokens"),
    ({"arch": "seq2seq", **TEXT}, "tokens"),
    (VIT, "patches"),
])
def test_naming_the_default_front_end_changes_nothing(registry, spec, front_end):
    plain, named = _build(registry, spec), _build(registry, {**spec, "front_end": front_end})
    assert list(plain.state_dict()) == list(named.state_dict())
    for (name, a), b in zip(plain.state_dict().items(), named.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_patches_norm_is_a_layernorm_over_every_token(registry):
    model = _build(registry, {**VIT, "front_end": {"type": "patches", "bias": False,
                                                   "norm": {"type": "layernorm", "eps": 1e-5}}})
    embed = model.patch_embed
    assert embed.proj.bias is None
    with torch.no_grad():
        embed.norm.weight.normal_()
        embed.norm.bias.normal_()
    pixels = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        x = torch.nn.functional.conv2d(pixels, embed.proj.weight, stride=4).flatten(2).transpose(1, 2)
        x = torch.cat([embed.cls_token.expand(2, -1, -1), x], 1) + embed.position
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        expected = (x - mean) / torch.sqrt(var + 1e-5) * embed.norm.weight + embed.norm.bias
        torch.testing.assert_close(embed(pixels), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,front_end,match", [
    ("vit", "tokens", "tokens reads token ids"),
    ("decoder", "patches", "patches reads pixels"),
])
def test_a_front_end_of_the_wrong_modality_is_a_build_error(registry, arch, front_end, match):
    spec = VIT if arch == "vit" else {"arch": arch, **TEXT}
    with pytest.raises(BuildError, match=match):
        _build(registry, {**spec, "front_end": front_end})


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_inputs_embeds_stand_for_the_token_rows(registry, arch):
    model = _build(registry, {"arch": arch, **TEXT, "embedding": {"scale": "sqrt_d_model",
                                                                  "norm": "layernorm"}})
    ids = torch.randint(0, 40, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        a = model(ids, mask).last_hidden_state
        b = model(inputs_embeds=model.embeddings.tokens(ids), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seq2seq_inputs_embeds_for_both_stacks(registry):
    model = _build(registry, {"arch": "seq2seq", **TEXT, "shared_embeddings": False})
    src, tgt = torch.randint(0, 40, (2, 6)), torch.randint(0, 40, (2, 4))
    with torch.no_grad():
        a = model(src, decoder_input_ids=tgt).logits
        b = model(inputs_embeds=model.encoder.embeddings.tokens(src),
                  decoder_inputs_embeds=model.decoder.embeddings.tokens(tgt)).logits
        c = model.encode(inputs_embeds=model.encoder.embeddings.tokens(src))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(c, model.encode(src), rtol=0, atol=0)


def test_vit_inputs_embeds_replace_the_patch_embedding(registry):
    model = _build(registry, VIT)
    pixels = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        a = model(pixels)
        b = model(inputs_embeds=model.patch_embed(pixels))
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pixel_values or inputs_embeds"):
        model()


def test_ids_and_embeds_together_are_refused(registry):
    model = _build(registry, {"arch": "decoder", **TEXT})
    ids = torch.randint(0, 40, (1, 3))
    with pytest.raises(ValueError, match="not both"):
        model(ids, inputs_embeds=model.embeddings.tokens(ids))
    with pytest.raises(ValueError, match=r"inputs_embeds must be \(batch, time, width\)"):
        model(inputs_embeds=torch.zeros(3, 16))


def test_generate_from_inputs_embeds_continues_like_the_ids(registry):
    model = _build(registry, {"arch": "decoder", **TEXT})
    ids = torch.randint(3, 40, (2, 5))
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    full = model.generate(ids, mask, max_new_tokens=6)
    new = model.generate(inputs_embeds=model.embeddings.tokens(ids), attention_mask=mask,
                         max_new_tokens=6)
    torch.testing.assert_close(new, full[:, 5:], rtol=0, atol=0)


def test_seq2seq_decoder_max_seq_len(registry):
    model = _build(registry, {"arch": "seq2seq", **TEXT, "decoder_max_seq_len": 5})
    assert model.encoder.max_seq_len == 32 and model.decoder.max_seq_len == 5
    assert model.decoder.position.embedding.num_embeddings == 5
    assert model.encoder.position.embedding.num_embeddings == 32
    src = torch.randint(0, 40, (1, 20))
    model(src, decoder_input_ids=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len 5"):
        model(src, decoder_input_ids=torch.zeros(1, 6, dtype=torch.long))
