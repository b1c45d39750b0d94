"""``lsh``: exact with one bucket and one chunk; with more buckets, exactly softmax over the
keys each query meets, finite, differentiable and never crossing causal order.

Shapes: B batch, Tq/Tk, H = 4 query heads, Hkv kv heads, D = 8.
"""

from __future__ import annotations

import pytest
import torch

from txblocks import KernelUnavailableError
from txblocks.attention import (
    AttentionCall,
    BlockDiagonalMask,
    CausalMask,
    EagerKernel,
    FullMask,
    PrefixLMMask,
)
from txblocks_lsh import LSHKernel, met_keys

H, D = 4, 8
SCALE = 0.3
#: name -> (mask class, Tq, Tk, window)
MASKS = {
    "full": (FullMask, 13, 13, None),
    "causal": (CausalMask, 13, 13, None),
    "cache": (CausalMask, 5, 13, None),
    "step": (CausalMask, 1, 13, None),
    "window": (CausalMask, 13, 13, 4),
    "cross": (FullMask, 6, 13, None),
}


def make_mask(name, batch, padding):
    cls, tq, tk, window = MASKS[name]
    pad = None
    if padding:
        pad = torch.ones(batch, tk, dtype=torch.bool)
        pad[0, :4] = False  # left padding: causal queries at the start see nothing
        pad[-1, -3:] = False
    kwargs = {"window": window} if cls is CausalMask else {}
    q_offset = 0 if name == "cross" else None
    return cls(tq, tk, key_padding=pad, q_offset=q_offset, **kwargs)


def inputs(mask, batch, n_kv_heads, gen):
    q = torch.randn(batch, mask.q_len, H, D, generator=gen)
    k = torch.randn(batch, mask.k_len, n_kv_heads, D, generator=gen)
    v = torch.randn(batch, mask.k_len, n_kv_heads, D, generator=gen)
    return q, k, v, torch.randn(batch, mask.q_len, H, D, generator=gen)


def run(fn, q, k, v, cotangent):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    (out * cotangent).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("n_hashes", [1, 2])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_one_bucket_and_one_chunk_is_exact_softmax(mask_name, padding, n_kv_heads, n_hashes,
                                                   softcap, gen):
    mask = make_mask(mask_name, 2, padding)
    q, k, v, cot = inputs(mask, 2, n_kv_heads, gen)
    kernel = LSHKernel(1, n_hashes=n_hashes, chunk=16)
    got = run(lambda q, k, v: kernel(q, k, v, mask, scale=SCALE, softcap=softcap), q, k, v, cot)
    want = run(lambda q, k, v: EagerKernel()(q, k, v, mask, scale=SCALE, softcap=softcap),
               q, k, v, cot)
    assert_same(got, want)


def softmax_over(q, k, v, allowed, scale):
    """Softmax attention restricted to ``allowed (B, H, Tq, Tk)``, one row at a time; 0 if none."""
    group = q.shape[2] // k.shape[2]
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            for i in range(q.shape[1]):
                keys = allowed[b, h, i]
                if keys.any():
                    s = (k[b, keys, h // group] @ q[b, i, h]) * scale
                    out[b, i, h] = s.softmax(-1) @ v[b, keys, h // group]
    return out


@pytest.mark.parametrize("slabs", ["one_slab", "slab_per_group"])
@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("mask_name", ["full", "causal", "cache", "step", "window"])
def test_many_buckets_is_softmax_over_the_keys_met(mask_name, n_hashes, slabs, gen, monkeypatch):
    """Several rounds: every key met is counted once, whatever the number of rounds.

    Long inputs go a slab of query groups at a time; ``slab_per_group`` forces one per slab.
    """
    import txblocks_lsh.attention

    if slabs == "slab_per_group":
        monkeypatch.setattr(txblocks_lsh.attention, "SLAB_SCORES", 1)
    cls, tq, tk, window = MASKS[mask_name]
    tq, tk = tq * 2, 29  # longer than one chunk
    pad = torch.ones(2, tk, dtype=torch.bool)
    pad[1, :5] = False
    mask = cls(tq, tk, key_padding=pad, **({"window": window} if cls is CausalMask else {}))
    q, k, v, cot = inputs(mask, 2, 2, gen)
    kernel = LSHKernel(4, n_hashes=n_hashes, chunk=4, seed=2)
    plan = kernel.plan(q, k, mask)
    met = met_keys(plan, tq=tq, tk=tk, q_offset=mask.q_offset)  # (B, H, Tq, Tk)
    assert 0.1 < met.float().mean() < 0.9  # neither everything nor nothing
    allowed = met & mask.keep("cpu")[:, 0][:, None]
    got = run(lambda q, k, v: kernel(q, k, v, mask, scale=SCALE), q, k, v, cot)
    want = run(lambda q, k, v: softmax_over(q, k, v, allowed, SCALE), q, k, v, cot)
    assert_same(got, want)


def test_many_buckets_finite_gradients_and_causal_order(gen):
    t = 64
    mask = CausalMask(t, t)
    q, k, v, _ = inputs(mask, 2, 2, gen)
    kernel = LSHKernel(8, n_hashes=2, chunk=8, seed=0)
    q_grads = torch.zeros_like(q)
    for p in (0, 17, 40, 63):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = kernel(*leaves, mask, scale=SCALE)
        assert torch.isfinite(out).all()
        out[:, p].square().sum().backward()
        assert all(torch.isfinite(x.grad).all() for x in leaves)
        assert leaves[2].grad[:, p].abs().sum() > 0  # its own value, at least
        # the output at p never depends on a later key or value
        assert torch.equal(leaves[1].grad[:, p + 1 :], torch.zeros_like(leaves[1].grad[:, p + 1 :]))
        assert torch.equal(leaves[2].grad[:, p + 1 :], torch.zeros_like(leaves[2].grad[:, p + 1 :]))
        q_grads += leaves[0].grad
    assert q_grads.abs().sum() > 0  # gradients reach the queries (and the hashing does not block)


def test_every_query_sees_at_least_its_own_key(gen):
    mask = CausalMask(48, 48)
    q, k, v, _ = inputs(mask, 1, 4, gen)
    out = LSHKernel(16, n_hashes=1, chunk=2)(q, k, v, mask, scale=SCALE)
    assert (out.abs().sum(-1) > 0).all()  # no row left empty by hashing


def test_seeded_and_reproducible(gen):
    mask = CausalMask(40, 40)
    q, k, v, _ = inputs(mask, 1, 2, gen)
    first = LSHKernel(8, chunk=4, seed=1)(q, k, v, mask, scale=SCALE)
    torch.testing.assert_close(LSHKernel(8, chunk=4, seed=1)(q, k, v, mask, scale=SCALE), first,
                               atol=0, rtol=0)
    assert not torch.allclose(LSHKernel(8, chunk=4, seed=2)(q, k, v, mask, scale=SCALE), first)


def test_default_buckets_follow_the_length():
    kernel = LSHKernel(chunk=64)
    assert [kernel.buckets_for(t) for t in (64, 65, 512, 1000)] == [1, 2, 8, 16]


def test_long_sequences_read_two_chunks_per_query(gen):
    t = 4096
    q = torch.randn(1, t, 2, 16, generator=gen)
    kernel = LSHKernel(n_hashes=1, chunk=32)
    mask = CausalMask(t, t)
    plan = kernel.plan(q, q, mask)
    assert plan.groups.shape[-2:] == (t // 32, 32)  # 128 groups of 32 queries, 64 keys each
    out = kernel(q, q, q, mask, scale=0.25)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize(("mask", "kwargs", "reason"), [
    (PrefixLMMask(4, 4, prefix_lengths=2), {}, r"mask PrefixLMMask is not supported: only "
                                               r"unmasked \('none'\), 'causal'"),
    (BlockDiagonalMask(4, 4, seq_lens=[[2, 2]]), {}, r"mask BlockDiagonalMask is not supported"),
    (CausalMask(4, 4, bias=torch.zeros(1, H, 4, 4)), {}, r"an additive attention bias \(ALiBi"),
    (FullMask(4, 4), {"dropout": 0.1}, r"dropout=0.1 on attention weights is not supported"),
])
def test_unsupported_calls_are_refused_with_a_reason(mask, kwargs, reason):
    q = torch.randn(1, 4, H, D)
    kernel = LSHKernel()
    assert len(kernel.why_not(AttentionCall.of(q, q, mask, **kwargs))) == 1
    with pytest.raises(KernelUnavailableError, match=rf"'lsh' cannot run this call: {reason}"):
        kernel(q, q, q, mask, scale=1.0, **kwargs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_buckets must be 1 or even, got 3"):
        LSHKernel(3)
