"""``block_sparse`` against ``eager`` under the same masks: outputs and gradients, fp32, 1e-5.

Shapes: B batch, Tq/Tk, H = 4 query heads, Hkv kv heads, D = 8.
"""

from __future__ import annotations

import pytest
import torch

from txblocks import KernelUnavailableError, load_registry
from txblocks.attention import AttentionCall, CausalMask, EagerKernel
from txblocks_sparse import BigBirdStrategy, BlockSparseKernel, LongformerStrategy

H, D = 4, 8
SCALE = 0.3  # not D ** -0.5, so that a kernel ignoring the scale fails
SHAPES = {"square": (13, 13, None), "cache": (5, 13, None), "top_left": (6, 13, 0),
          "step": (1, 13, None)}


def tokens(batch: int, k_len: int) -> torch.Tensor:
    t = torch.zeros(batch, k_len, dtype=torch.bool)
    t[0, 9] = True
    t[-1, [2, 11]] = True
    return t


MASKS = {
    "longformer_sym_positions": (lambda: LongformerStrategy(3, global_positions=[0, 6],
                                                            block_size=4), {}),
    "longformer_causal_tokens": (lambda: LongformerStrategy(3, causal=True, block_size=4),
                                 {"global_tokens": tokens}),
    "longformer_causal_plain": (lambda: LongformerStrategy(2, causal=True, block_size=3), {}),
    "longformer_sym_prefix": (lambda: LongformerStrategy(2, global_prefix=True, block_size=5),
                              {"prefix_lengths": lambda b, t: torch.arange(b) + 1}),
    "bigbird_sym": (lambda: BigBirdStrategy(2, window_blocks=3, global_blocks=1,
                                            random_blocks=2, seed=1), {}),
    "bigbird_causal": (lambda: BigBirdStrategy(3, window_blocks=1, global_blocks=1,
                                               random_blocks=1, seed=2, causal=True), {}),
}


def make_mask(name, batch, shape, padding):
    factory, call = MASKS[name]
    q_len, k_len, q_offset = SHAPES[shape]
    pad = None
    if padding != "none":
        pad = torch.ones(batch, k_len, dtype=torch.bool)
        cut = slice(0, 4) if padding == "left" else slice(k_len - 4, k_len)
        pad[0, cut] = False
    kwargs = {key: fn(batch, k_len) for key, fn in call.items()}
    return factory()(q_len, k_len, key_padding=pad, q_offset=q_offset, **kwargs)


def run(kernel, q, k, v, mask, bias, cotangent, **kwargs):
    """Output and gradients w.r.t. q, k, v (and bias)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    bias_leaf = None if bias is None else bias.detach().clone().requires_grad_()
    out = kernel(*leaves, mask.with_bias(bias_leaf), scale=SCALE, **kwargs)
    (out * cotangent).sum().backward()
    return out.detach(), [t.grad for t in leaves] + ([] if bias is None else [bias_leaf.grad])


def inputs(mask, batch, n_kv_heads, gen, bias):
    tq, tk = mask.q_len, mask.k_len
    q = torch.randn(batch, tq, H, D, generator=gen)
    k = torch.randn(batch, tk, n_kv_heads, D, generator=gen)
    v = torch.randn(batch, tk, n_kv_heads, D, generator=gen)
    b = torch.randn(1, H, tq, tk, generator=gen) if bias else None
    return q, k, v, b, torch.randn(batch, tq, H, D, generator=gen)


def assert_same(got, want):
    out, grads = got
    want_out, want_grads = want
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_block_sparse_matches_eager(mask_name, shape, padding, n_kv_heads, bias, gen):
    batch = 2
    mask = make_mask(mask_name, batch, shape, padding)
    q, k, v, b, cot = inputs(mask, batch, n_kv_heads, gen, bias)
    got = run(BlockSparseKernel(), q, k, v, mask, b, cot)
    assert_same(got, run(EagerKernel(), q, k, v, mask, b, cot))


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_softcap_matches_eager(mask_name, gen):
    mask = make_mask(mask_name, 2, "square", "left")
    q, k, v, b, cot = inputs(mask, 2, 2, gen, bias=True)
    got = run(BlockSparseKernel(), 3 * q, k, v, mask, b, cot, softcap=2.0)
    assert_same(got, run(EagerKernel(), 3 * q, k, v, mask, b, cot, softcap=2.0))


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_rows_without_keys_are_zero_with_finite_gradients(mask_name, gen):
    pad = torch.ones(3, 13, dtype=torch.bool)
    pad[0] = False  # a row padded everywhere
    pad[1, :5] = False  # left padding: causal queries at the start see nothing
    factory, call = MASKS[mask_name]
    kwargs = {key: fn(3, 13) for key, fn in call.items()}
    mask = factory()(13, 13, key_padding=pad, **kwargs)
    q, k, v, b, cot = inputs(mask, 3, 2, gen, bias=True)
    out, grads = run(BlockSparseKernel(), q, k, v, mask, b, cot)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    empty = mask.empty_rows("cpu").expand(3, 1, 13, 1)[:, 0, :, 0]
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert all(torch.isfinite(g).all() for g in grads)
    assert_same((out, grads), run(EagerKernel(), q, k, v, mask, b, cot))


def test_dropout_runs_and_zero_dropout_is_exact(gen):
    mask = make_mask("bigbird_sym", 2, "square", "none")
    q, k, v, _, _ = inputs(mask, 2, 2, gen, bias=False)
    kernel = BlockSparseKernel()
    dropped = kernel(q, k, v, mask, scale=SCALE, dropout=0.5)
    assert torch.isfinite(dropped).all()
    assert not torch.allclose(dropped, EagerKernel()(q, k, v, mask, scale=SCALE))
    torch.testing.assert_close(kernel(q, k, v, mask, scale=SCALE, dropout=0.0),
                               EagerKernel()(q, k, v, mask, scale=SCALE), atol=1e-5, rtol=1e-5)


def test_masks_without_block_structure_are_refused_with_a_reason(gen):
    kernel = BlockSparseKernel()
    q, k = torch.randn(1, 4, H, D, generator=gen), torch.randn(1, 4, H, D, generator=gen)
    mask = CausalMask(4, 4)
    reasons = kernel.why_not(AttentionCall.of(q, k, mask))
    assert len(reasons) == 1
    assert "mask CausalMask exposes no block structure" in reasons[0]
    assert "'longformer' and 'bigbird'" in reasons[0]
    with pytest.raises(KernelUnavailableError, match="'block_sparse' cannot run this call: "
                                                     "mask CausalMask exposes no block"):
        kernel(q, k, k, mask, scale=SCALE)
    sparse = LongformerStrategy(2)(4, 4)
    assert kernel.why_not(AttentionCall.of(q, k, sparse)) == []


def test_registered_below_every_builtin_kernel():
    registry = load_registry()
    entry = registry.get("attention", "block_sparse")
    kernel = entry.factory(entry.config())
    builtins = [registry.get("attention", n) for n in ("eager", "sdpa", "xformers")]
    assert all(kernel.priority < e.factory(e.config()).priority for e in builtins)


def test_long_sequence_runs_without_the_dense_matrix():
    """T = 4096 with window 32: the gathered keys are a small multiple of T, not T²."""
    t = 4096
    mask = LongformerStrategy(32, global_positions=[0], block_size=32)(t, t)
    layout = mask.block_layout("cpu")
    assert layout.slots * layout.block <= 5 * 32  # keys scored per query, independent of T
    q = torch.randn(1, t, 2, 16)
    out = BlockSparseKernel()(q, q[:, :, :1], q[:, :, :1], mask, scale=0.25)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_query_blocks_in_slabs_match_eager(mask_name, shape, gen, monkeypatch):
    """Long inputs are processed a slab of query blocks at a time: here one block per slab."""
    import txblocks_sparse.kernel

    monkeypatch.setattr(txblocks_sparse.kernel, "SLAB_SCORES", 1)
    mask = make_mask(mask_name, 2, shape, "left")
    q, k, v, b, cot = inputs(mask, 2, 2, gen, bias=True)
    got = run(BlockSparseKernel(), q, k, v, mask, b, cot)
    assert_same(got, run(EagerKernel(), q, k, v, mask, b, cot))
