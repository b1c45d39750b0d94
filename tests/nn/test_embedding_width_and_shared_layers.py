"""Issue 16's embedding and stack options against their definitions, written out here:

* ``embedding.width`` with the projection last (ALBERT, ELECTRA-small):
  ``x = W · drop(norm(E[ids] + S[types] + P[pos])) + b``, all three tables ``width`` wide;
* the projection right after the tokens (OPT-350m's ``project_in``): ``x = W · E[ids] + P[pos]``;
* ``embedding.project_out`` (OPT-350m): the output is ``W_out · final_norm(h)``, and a tied
  LM head reads the ``width``-wide table;
* an ``mlm`` head maps to the table's width (ALBERT, ELECTRA);
* ``share_layers: {groups: g}``: one block applied to each run of layers; parameters counted
  once (``model.parameters()``, ``model_size``, ``summary``).
"""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.build import model_size
from txblocks.summary import summarize

BASE = {"arch": "encoder", "vocab_size": 30, "d_model": 24, "n_layers": 4, "n_heads": 4,
        "max_seq_len": 16, "block": {"layout": "post_norm"}, "final_norm": False}  # fmt: skip


def _perturb(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def test_projection_last(gen):
    spec = {**BASE, "embedding": {"width": 8, "token_types": 2, "norm": "layernorm"}}
    model = _perturb(txblocks.build(spec), gen)
    emb = model.embeddings
    assert emb.tokens.weight.shape == (30, 8) and emb.token_types.weight.shape == (2, 8)
    assert model.position.embedding.weight.shape == (16, 8)
    ids = torch.randint(0, 30, (2, 6), generator=gen)
    types = torch.randint(0, 2, (2, 6), generator=gen)
    summed = emb.tokens.weight[ids] + emb.token_types.weight[types] \
        + model.position.embedding.weight[:6]
    expected = emb.norm(summed) @ emb.project.weight.T + emb.project.bias
    got = emb(ids, model.position.embed(torch.arange(6)[None]), types)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_projection_after_the_tokens_and_back(gen):
    spec = {**BASE, "arch": "decoder", "block": {"layout": "pre_norm"}, "final_norm": True,
            "embedding": {"width": 8, "project_at": "tokens", "project_bias": False,
                          "project_out": True},
            "head": {"type": "lm", "tie_embeddings": True}}  # fmt: skip
    model = _perturb(txblocks.build(spec), gen)
    emb = model.embeddings
    assert emb.project.bias is None and model.project_out.bias is None
    assert model.position.embedding.weight.shape == (16, 24)  # positions are d_model wide
    assert model.head.proj.weight is emb.tokens.weight
    ids = torch.randint(0, 30, (2, 6), generator=gen)
    first = emb.tokens.weight[ids] @ emb.project.weight.T + model.position.embedding.weight[:6]
    torch.testing.assert_close(emb(ids, model.position.embed(torch.arange(6)[None])), first,
                               atol=1e-6, rtol=1e-6)  # fmt: skip
    x = first
    for block, mask in zip(model.blocks, model.attention_masks(6, device=x.device,
                                                               dtype=x.dtype), strict=True):
        x = block(x, mask)[0]
    hidden = model.final_norm(x) @ model.project_out.weight.T  # (B, T, width)
    out = model(ids)
    torch.testing.assert_close(out.last_hidden_state, hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, hidden @ emb.tokens.weight.T, atol=1e-5, rtol=1e-5)


def test_mlm_head_reads_the_table_width(gen):
    spec = {**BASE, "embedding": {"width": 8}, "head": "mlm"}
    model = _perturb(txblocks.build(spec), gen)
    head = model.head
    assert head.dense.weight.shape == (8, 24) and head.norm.weight.shape == (8,)
    assert head.decoder.proj.weight is model.embeddings.tokens.weight
    h = torch.randn(2, 5, 24, generator=gen)
    expected = head.norm(head.act(head.dense(h))) @ model.embeddings.tokens.weight.T \
        + head.decoder.proj.bias
    torch.testing.assert_close(head(h), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_shared_layers_are_one_block_applied_again(gen, groups):
    shared = {**BASE, "share_layers": {"groups": groups}}
    model = _perturb(txblocks.build(shared), gen)
    run = 4 // groups
    for i, block in enumerate(model.blocks):
        assert block is model.blocks[i - i % run]
    ids = torch.randint(0, 30, (2, 7), generator=gen)
    x = model.embeddings(ids, model.position.embed(torch.arange(7)[None]))
    masks = model.attention_masks(7, device=x.device, dtype=x.dtype)
    for i in range(4):
        x = model.blocks[i - i % run](x, masks[i])[0]
    torch.testing.assert_close(model(ids).last_hidden_state, x, atol=1e-6, rtol=1e-6)
    # parameters once: as many as the unshared model with `groups` layers
    counted = sum(p.numel() for p in model.parameters())
    with_groups = txblocks.build({**BASE, "n_layers": groups})
    assert counted == sum(p.numel() for p in with_groups.parameters())
    assert model_size(shared).parameters == counted
    summary = summarize(model.spec, model=model)
    assert summary.parameters == counted
    assert [row.parameters > 0 for row in summary.layers] == [i % run == 0 for i in range(4)]


def test_shared_layers_survive_save_and_load(tmp_path, gen):
    model = _perturb(txblocks.build({**BASE, "share_layers": {"groups": 1}}), gen)
    txblocks.save(model, tmp_path / "m.safetensors")
    back = txblocks.load(tmp_path / "m.safetensors").eval()
    assert all(block is back.blocks[0] for block in back.blocks)
    ids = torch.randint(0, 30, (2, 7), generator=gen)
    torch.testing.assert_close(back(ids).last_hidden_state, model(ids).last_hidden_state)


def test_shared_layers_decode_with_a_cache(gen):
    spec = {**BASE, "arch": "decoder", "block": {"layout": "pre_norm"}, "final_norm": True,
            "share_layers": {"groups": 2}, "head": "lm"}  # fmt: skip
    model = _perturb(txblocks.build(spec), gen)
    ids = torch.randint(0, 30, (2, 8), generator=gen)
    full = model(ids).logits
    cache = model.new_cache(2, 8)
    steps = [model(ids[:, :5], cache=cache).logits]
    for t in range(5, 8):
        steps.append(model(ids[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
