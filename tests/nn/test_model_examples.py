"""Every example spec builds and runs; padding behaves; build errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import txblocks

SPECS = sorted((Path(__file__).parents[2] / "examples" / "specs").glob("*.yaml"))


def _tiny(registry, **changes):
    base = {
        "arch": "decoder", "vocab_size": 50, "max_seq_len": 32, "d_model": 32, "n_layers": 2,
        "n_heads": 4, "n_kv_heads": 2, "position": "rope", "block": {"norm": "rmsnorm", "ffn": "glu"},
    }
    base.update(changes)
    return txblocks.build(txblocks.load_spec(base, registry=registry)).eval()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_builds_and_runs(registry, gen, path):
    spec = txblocks.load_spec(path, registry=registry)
    model = txblocks.build(spec).eval()
    if spec.arch == "vit":
        with torch.no_grad():
            out = model(torch.randn(2, spec.channels, *spec.image_hw, generator=gen))
        n_tokens = (spec.image_hw[0] // spec.patch_hw[0]) * (spec.image_hw[1] // spec.patch_hw[1])
        assert out.last_hidden_state.shape == (2, n_tokens + spec.class_token, spec.d_model)
        assert out.logits.shape == (2, spec.head.n_classes)
        assert len(model.blocks) == spec.n_layers
        return
    ids = torch.randint(0, spec.vocab_size, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        if spec.arch == "seq2seq":
            out = model(ids, mask, decoder_input_ids=ids[:, :9], decoder_attention_mask=mask)
            assert len(model.encoder.blocks) == spec.n_layers
            assert out.encoder_last_hidden_state.shape == (2, 9, spec.d_model)
        else:
            out = model(ids, attention_mask=mask)
            assert len(model.blocks) == spec.n_layers
    assert out.last_hidden_state.shape == (2, 9, spec.d_model)
    assert out.logits is not None and out.logits.shape == (2, 9, spec.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_right_padding_does_not_change_real_positions(registry, gen):
    for arch, position in (("decoder", "rope"), ("encoder", "learned"), ("decoder", "alibi")):
        model = _tiny(registry, arch=arch, position=position)
        ids = torch.randint(0, 50, (1, 6), generator=gen)
        padded = torch.cat([ids, torch.randint(0, 50, (1, 3), generator=gen)], dim=1)
        mask = torch.tensor([[1] * 6 + [0] * 3])
        with torch.no_grad():
            alone = model(ids).last_hidden_state
            both = model(padded, attention_mask=mask).last_hidden_state[:, :6]
        torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)


def test_left_padding_with_positions_matches_unpadded(registry, gen):
    model = _tiny(registry)
    ids = torch.randint(0, 50, (1, 5), generator=gen)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        alone = model(ids).logits
        left = model(padded, attention_mask=mask, position_ids=positions).logits
    assert torch.isfinite(left).all()  # the pad rows see no key at all
    torch.testing.assert_close(left[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_backward_reaches_every_parameter(registry, gen):
    model = _tiny(registry).train()
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    model(ids, attention_mask=mask).logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_tied_and_untied_heads(registry):
    tied = _tiny(registry, head={"type": "lm", "tie_embeddings": True})
    untied = _tiny(registry, head={"type": "lm", "tie_embeddings": False})
    assert tied.head.proj.weight is tied.embeddings.tokens.weight
    assert untied.head.proj.weight is not untied.embeddings.tokens.weight


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_classifier_pooling(registry, gen, pooling):
    model = _tiny(registry, arch="encoder",
                  head={"type": "classifier", "n_classes": 3, "pooling": pooling, "pooler": True})
    ids = torch.randint(0, 50, (2, 6), generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        hidden = out.last_hidden_state
        index = {"cls": [0, 0], "last": [5, 3]}
        if pooling == "mean":
            pooled = torch.stack([hidden[0].mean(0), hidden[1, :4].mean(0)])
        else:
            pooled = hidden[torch.arange(2), index[pooling]]
        expected = model.head.out(model.head.pooler(pooled))
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_token_types_change_the_output(registry, gen):
    model = _tiny(registry, arch="encoder", embedding={"token_types": 2}, head={"type": "token_classifier", "n_classes": 5})
    ids = torch.randint(0, 50, (1, 6), generator=gen)
    with torch.no_grad():
        a = model(ids, token_type_ids=torch.zeros_like(ids)).logits
        b = model(ids, token_type_ids=torch.ones_like(ids)).logits
    assert a.shape == (1, 6, 5) and not torch.allclose(a, b)


def test_xformers_kernel_on_cpu_fails_at_build(registry):
    with pytest.raises(txblocks.BuildError, match=r"block\.attention\.kernel: 'xformers' cannot run on cpu"):
        _tiny(registry, block={"attention": {"kernel": "xformers"}})


def test_mismatched_attention_mask_is_named(registry):
    model = _tiny(registry)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))


def test_build_in_bfloat16(registry, gen):
    model = txblocks.build(
        txblocks.load_spec({"arch": "decoder", "vocab_size": 50, "d_model": 32, "n_layers": 1, "n_heads": 4},
                           registry=registry),
        dtype=torch.bfloat16,
    )
    out = model(torch.randint(0, 50, (1, 4), generator=gen))
    assert out.logits.dtype == torch.bfloat16
