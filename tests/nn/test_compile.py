"""torch.compile(fullgraph=True) traces encoder and decoder forwards with no graph break.

The `eager` dynamo backend traces the graph exactly as inductor would (a graph break
raises under fullgraph=True) without compiling kernels, so the test stays fast.
"""

from __future__ import annotations

import pytest
import torch

import txblocks

POSITIONS = ["none", "sinusoidal", "learned", "rope", "alibi", "relative_bias",
             {"type": "rope", "scaling": {"type": "llama3", "factor": 8.0, "original_max_seq_len": 16}}]
# One model per positional scheme, one mask per layer: a graph break anywhere fails the trace.
LAYER_MASKS = ["none", "causal", {"type": "sliding_window", "window": 3}, {"type": "prefix_lm", "length": 3}]


def _name(value):
    return value if isinstance(value, str) else "-".join(str(v) for v in value.values() if not isinstance(v, dict))


def _check(registry, gen, spec, **kwargs):
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    ids = torch.randint(0, 50, (2, 8), generator=gen)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 6:] = 0
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(ids, attention_mask, **kwargs).logits
        got = compiled(ids, attention_mask, **kwargs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _spec(arch, position, n_layers, mask="causal"):
    return {"arch": arch, "vocab_size": 50, "max_seq_len": 32, "d_model": 32, "n_layers": n_layers,
            "n_heads": 4, "n_kv_heads": 2, "position": position, "head": "lm",
            "block": {"attention": {"kernel": "sdpa", "mask": mask}}}


@pytest.mark.parametrize("position", POSITIONS, ids=[_name(p) for p in POSITIONS])
def test_decoder_with_every_mask_compiles(registry, gen, position):
    spec = _spec("decoder", position, len(LAYER_MASKS))
    spec["layers"] = [{"select": i, "attention": {"mask": m}} for i, m in enumerate(LAYER_MASKS)]
    _check(registry, gen, spec)


def test_encoder_compiles(registry, gen):
    _check(registry, gen, _spec("encoder", "learned", 2, mask="none"))


def test_packed_sequences_compile(registry, gen):
    spec = _spec("decoder", "rope", 2, mask={"type": "block_diagonal", "causal": True})
    _check(registry, gen, spec, seq_lens=[[3, 5], [4, 4]])
