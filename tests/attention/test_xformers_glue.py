"""The xformers glue: mask -> AttentionBias, layouts, alignment, errors; CUDA parity.

On CPU, xformers' kernels do not run, so ``memory_efficient_attention`` is replaced
by a reference that materializes the bias it receives (checking shape and
alignment as xformers does) and the whole kernel is compared with eager.
"""

from __future__ import annotations

import pytest
import torch

from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionCall
from txblocks.attention.mask import BlockDiagonalMask, CausalMask, FullMask
from txblocks.attention.xformers_kernel import XFormersKernel, _dense

xformers_ops = pytest.importorskip("xformers.ops")
ab = pytest.importorskip("xformers.ops.fmha.attn_bias")

CPU = torch.device("cpu")
H = 4


def _check_tensor_bias(bias: torch.Tensor, shape: tuple[int, ...]) -> None:
    """xformers' rule (cutlass ``_check_bias_alignment``): strides aligned to 16 bytes."""
    assert tuple(bias.shape) == shape, (bias.shape, shape)
    alignment = 128 // torch.finfo(bias.dtype).bits
    assert all(s % alignment == 0 for s in bias.stride()[:-1]), bias.stride()
    assert bias.stride(-1) == 1


def reference_mea(q, k, v, attn_bias=None, p=0.0, scale=None):
    """Stands in for xformers.ops.memory_efficient_attention on CPU (BMHK or BMGHK)."""
    assert p == 0.0
    out_shape = q.shape
    if q.ndim == 5:  # (B, M, G, R, K), K/V expanded over R
        assert k.stride(3) == 0 and v.stride(3) == 0
        shape = (q.shape[0], q.shape[2], q.shape[3], q.shape[1], k.shape[1])
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
    else:
        shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if isinstance(attn_bias, torch.Tensor):
        _check_tensor_bias(attn_bias, shape)
        bias = attn_bias
    elif attn_bias is not None:
        if isinstance(attn_bias, ab.LowerTriangularMaskWithTensorBias):
            _check_tensor_bias(attn_bias._bias, shape)
        bias = attn_bias.materialize(shape, dtype=scores.dtype)
    else:
        bias = torch.zeros(shape)
    scores = scores + bias.reshape(scores.shape[0], -1, *scores.shape[-2:])
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(out_shape)


@pytest.fixture
def fake_xformers(monkeypatch):
    monkeypatch.setattr(xformers_ops, "memory_efficient_attention", reference_mea)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("shape", ["square", "cache", "top_left"])
def test_kernel_glue_matches_eager(mask_case, shape, padding, n_kv_heads, bias, make_mask, gen,
                                   fake_xformers):  # fmt: skip
    built = make_mask(mask_case, batch=2, shape=shape, padding=padding)
    tq, tk = built.q_len, built.k_len
    q = torch.randn(2, tq, H, 8, generator=gen)
    k, v = (torch.randn(2, tk, n_kv_heads, 8, generator=gen) for _ in range(2))
    bias_t = torch.randn(1, H, tq, tk, generator=gen) if bias else None
    cotangent = torch.randn(2, tq, H, 8, generator=gen)
    results = []
    for kernel in (XFormersKernel(), EagerKernel()):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        bias_leaf = None if bias_t is None else bias_t.clone().requires_grad_()
        mask = built.mask.with_bias(bias_leaf)
        out = kernel.attend(*leaves, mask, scale=0.3, dropout=0.0, softcap=None)
        (out * cotangent).sum().backward()
        extra = [] if bias_leaf is None else [bias_leaf.grad]
        results.append([out.detach()] + [t.grad for t in leaves] + extra)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("padding", ["none", "right"])
@pytest.mark.parametrize("shape", ["square", "cache", "top_left"])
def test_bias_materializes_to_the_dense_mask(mask_case, shape, padding, bias, make_mask, gen):
    built = make_mask(mask_case, batch=2, shape=shape, padding=padding)
    mask = built.mask
    if bias:
        mask = mask.with_bias(torch.randn(2, H, built.q_len, built.k_len, generator=gen))
    xb = mask.xformers(torch.float32, CPU)
    dense = mask.additive(torch.float32, CPU)
    if xb is None:
        assert dense is None
        return
    if isinstance(xb, torch.Tensor):
        assert torch.equal(xb, dense)
        return
    assert padding == "none"  # xformers' classes cannot express key padding
    keep = mask.keep(CPU)
    keep = keep.expand(2, H, -1, -1)
    values = torch.zeros(2, H, built.q_len, built.k_len) if mask.bias is None else mask.bias
    if isinstance(xb, ab.BlockDiagonalMask):  # batch flattened to (1, B*T)
        assert built.q_len == built.k_len and mask.bias is None
        mat = xb.materialize((H, 2 * built.q_len, 2 * built.k_len))
        want = torch.block_diag(*keep[:, 0].unbind(0))  # rows of the batch never mix
        assert torch.equal(mat[0] == 0, want)
        assert torch.equal(torch.isneginf(mat[0]), ~want)
        return
    mat = xb.materialize((2, H, built.q_len, built.k_len))
    assert torch.equal(torch.isneginf(mat), ~keep)
    torch.testing.assert_close(mat[keep], values.expand(2, H, -1, -1)[keep])


def test_one_row_of_seq_lens_for_the_batch(gen, fake_xformers):
    mask = BlockDiagonalMask(6, 6, seq_lens=[[2, 4]])  # broadcast over B=3 rows
    q, k, v = (torch.randn(3, 6, H, 8, generator=gen) for _ in range(3))
    out = XFormersKernel().attend(q, k, v, mask, scale=0.3, dropout=0.0, softcap=None)
    want = EagerKernel()(q, k, v, mask, scale=0.3)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_xformers_classes_are_used_where_exact(gen):
    def bias_of(mask):
        return mask.xformers(torch.float16, CPU)

    assert type(bias_of(CausalMask(6, 6))) is ab.LowerTriangularMask
    assert type(bias_of(CausalMask(3, 7, q_offset=0))) is ab.LowerTriangularMask
    assert type(bias_of(CausalMask(3, 7))) is ab.LowerTriangularFromBottomRightMask
    local = bias_of(CausalMask(3, 7, window=2))
    assert type(local) is ab.LowerTriangularFromBottomRightLocalAttentionMask
    assert local._window_size == 2  # same window semantics, checked by materializing above
    alibi = torch.randn(1, H, 6, 6, generator=gen)
    assert type(bias_of(CausalMask(6, 6, bias=alibi))) is ab.LowerTriangularMaskWithTensorBias
    seq_lens = [[2, 4], [6]]
    assert type(bias_of(BlockDiagonalMask(6, 6, seq_lens=seq_lens))) is ab.BlockDiagonalCausalMask
    full = BlockDiagonalMask(6, 6, seq_lens=seq_lens, causal=False)
    assert type(bias_of(full)) is ab.BlockDiagonalMask
    banded = BlockDiagonalMask(6, 6, seq_lens=seq_lens, window=3)
    assert type(bias_of(banded)) is ab.BlockDiagonalCausalLocalAttentionMask
    assert bias_of(FullMask(3, 5)) is None
    padded = CausalMask(6, 6, key_padding=torch.rand(2, 6, generator=gen) > 0.3)
    assert isinstance(bias_of(padded), torch.Tensor)
    assert isinstance(bias_of(CausalMask(7, 3)), torch.Tensor)  # rows with no key: finite


def test_dense_bias_is_aligned_for_xformers(gen):
    bias = torch.randn(1, H, 5, 5, generator=gen, dtype=torch.float16)
    dense = _dense(bias, batch=3, heads=H, groups=H)
    _check_tensor_bias(dense, (3, H, 5, 5))
    assert torch.equal(dense, bias.expand(3, H, 5, 5))
    grouped = _dense(bias, batch=3, heads=H, groups=2)  # GQA: (B, G, R, Tq, Tk)
    _check_tensor_bias(grouped, (3, 2, H // 2, 5, 5))
    assert torch.equal(grouped.flatten(1, 2), bias.expand(3, H, 5, 5))


def test_why_not_on_cpu_is_actionable(gen):
    kernel = XFormersKernel()
    reasons = kernel.why_not_on(CPU)
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    assert "CUDA" in reasons[0] and "sdpa" in reasons[0]
    q = torch.randn(1, 4, H, 8, generator=gen, dtype=torch.float64)
    call = AttentionCall.of(q, q, CausalMask(4, 4), softcap=5.0)
    text = "\n".join(kernel.why_not(call))
    assert "CUDA" in text and "softcap" in text and "float64" in text


def test_call_on_cpu_raises_with_the_reasons(gen):
    from txblocks.errors import KernelUnavailableError

    q = torch.randn(1, 4, H, 8, generator=gen)
    with pytest.raises(KernelUnavailableError, match="'xformers' cannot run.*CUDA"):
        XFormersKernel()(q, q, q, CausalMask(4, 4), scale=1.0)


# -- on a GPU: the real kernels against eager -------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("shape", ["square", "cache"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_xformers_matches_eager_on_cuda(mask_case, shape, padding, n_kv_heads, dtype, bias,
                                        make_mask, gen):  # fmt: skip
    cuda = torch.device("cuda")
    kernel = XFormersKernel()
    if kernel.why_not_on(cuda):
        pytest.skip("; ".join(kernel.why_not_on(cuda)))
    built = make_mask(mask_case, batch=3, shape=shape, padding=padding)
    tq, tk, d = built.q_len, built.k_len, 16
    q = torch.randn(3, tq, H, d, generator=gen)
    k, v = (torch.randn(3, tk, n_kv_heads, d, generator=gen) for _ in range(2))
    bias_t = torch.randn(1, H, tq, tk, generator=gen) if bias else None
    cotangent = torch.randn(3, tq, H, d, generator=gen).to(cuda)
    results = []
    for kern, dt in ((kernel, dtype), (EagerKernel(), torch.float32)):
        leaves = [t.to(cuda, dt).requires_grad_() for t in (q, k, v)]
        mask = built.mask.with_bias(None if bias_t is None else bias_t.to(cuda, dt))
        out = kern(*leaves, mask, scale=d**-0.5)
        (out.float() * cotangent).sum().backward()
        results.append([out.float()] + [t.grad.float() for t in leaves])
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for i, (got, want) in enumerate(zip(*results, strict=True)):
        scale = 1 if i == 0 else 5  # gradients accumulate more rounding
        torch.testing.assert_close(got, want, atol=tol * scale, rtol=tol * scale)
        assert torch.isfinite(got).all()
