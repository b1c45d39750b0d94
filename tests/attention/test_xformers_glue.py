"""The xformers glue: masks -> xformers biases and layouts, xformers' verdict, gradients.

On CPU xformers' kernels do not run. ``xformers_on_cpu`` (see ``xformers_on_cpu.py``) lets
xformers' own operators, dispatch and autograd function run on CPU tensors with plain math
in place of the CUDA kernels, so that the whole path (custom op, layouts, bias padding and
folding, gradients) is compared with eager, and txblocks' verdict with xformers' dispatch.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionCall
from txblocks.attention.mask import BlockDiagonalMask, CausalMask, FullMask
from txblocks.attention.xformers_kernel import XFormersKernel, XFormersPlan, padded_bias

xformers_ops = pytest.importorskip("xformers.ops")
ab = pytest.importorskip("xformers.ops.fmha.attn_bias")

from txblocks.testing import xformers_on_cpu  # noqa: E402

CPU = torch.device("cpu")
H = 4


def _check_tensor_bias(bias: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(bias.shape) == shape, (bias.shape, shape)
    xformers_on_cpu._check_aligned(bias)


@pytest.fixture
def xformers_cpu(monkeypatch):
    return xformers_on_cpu.patch(monkeypatch)


def _attend(kernel):
    """``kernel.attend`` as a call: on CPU ``__call__`` would refuse xformers for its device."""
    return lambda q, k, v, mask, scale: kernel.attend(q, k, v, mask, scale=scale, dropout=0.0,
                                                      softcap=None)  # fmt: skip


def _run(kernel, q, k, v, mask, bias, cotangent, grad=True):
    leaves = [t.clone().requires_grad_(grad) for t in (q, k, v)]
    bias_leaf = None if bias is None else bias.clone().requires_grad_(grad)
    mask = mask.with_bias(bias_leaf)
    out = kernel(*leaves, mask, scale=0.3)
    if not grad:
        return [out]
    (out.float() * cotangent).sum().backward()
    return [out.detach()] + [t.grad for t in leaves] + ([] if bias_leaf is None else [bias_leaf.grad])


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("shape", ["square", "cache", "top_left"])
def test_kernel_glue_matches_eager(mask_case, shape, padding, n_kv_heads, bias, make_mask, gen,
                                   xformers_cpu):  # fmt: skip
    built = make_mask(mask_case, batch=2, shape=shape, padding=padding)
    tq, tk = built.q_len, built.k_len
    q = torch.randn(2, tq, H, 8, generator=gen)
    k, v = (torch.randn(2, tk, n_kv_heads, 8, generator=gen) for _ in range(2))
    bias_t = torch.randn(1, H, tq, tk, generator=gen) if bias else None
    cotangent = torch.randn(2, tq, H, 8, generator=gen)
    kernel = XFormersKernel()
    for grad in (False, True):  # inference (5-D groups where taken) and training layouts
        got = _run(_attend(kernel), q, k, v, built.mask, bias_t, cotangent, grad)
        want = _run(EagerKernel(), q, k, v, built.mask, bias_t, cotangent, grad)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert xformers_cpu, "no xformers operator ran"


def _forms(q, k, v, mask, grad):
    """Every form txblocks may hand xformers for this call, in txblocks' order of preference:
    (structure or fold) x (layout), as ``(plan fields, xformers Inputs)``."""
    from txblocks.attention.xformers_kernel import _folded, _parts
    from txblocks.attention.xformers_op import xformers_inputs

    structure, bias = _parts(mask, q.dtype, CPU, q.shape[0])
    forms = [(structure, bias, False)]
    if structure is not None:
        forms.append((None, _folded(mask, q.dtype, CPU), True))
    layouts = ("groups", "expanded") if q.shape[2] != k.shape[2] else ("heads",)
    for (s, tensor, folded), layout in itertools.product(forms, layouts):
        leaves = [t.detach().requires_grad_(grad) for t in (q, k, v)]
        t = None if tensor is None else tensor.detach().requires_grad_(
            grad and mask.bias is not None)
        yield (s, folded, layout), xformers_inputs(*leaves, t, s, layout, 0.3, 0.0)


def _xformers_accepts(inp, grad, ran):
    """Run xformers' public API on ``inp``: its dispatch picks the operators (or refuses)."""
    ran.clear()
    try:
        out = xformers_ops.memory_efficient_attention(
            inp.query, inp.key, inp.value, attn_bias=inp.attn_bias, p=inp.p, scale=inp.scale)
        if grad:
            out.float().sum().backward()
    except NotImplementedError as exc:
        assert "No operator found" in str(exc), exc
        return None
    return tuple(ran)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("head_dim", [8, 6], ids=["d8", "d6"])
def test_verdict_is_xformers_dispatch(mask_case, dtype, head_dim, make_mask, gen, xformers_cpu):
    """mask x shape x padding x heads x dtype x bias x needs-grad: txblocks runs a call
    exactly when xformers' own dispatch accepts one of the forms txblocks may give it, the
    first such form, through the operators xformers' dispatch picks for it."""
    kernel = XFormersKernel()
    for shape, padding, hkv, bias, grad in itertools.product(
            ("square", "cache", "top_left"), ("none", "left"), (4, 2), (False, True),
            (False, True)):  # fmt: skip
        built = make_mask(mask_case, batch=2, shape=shape, padding=padding)
        q = torch.randn(2, built.q_len, H, head_dim, generator=gen, dtype=dtype)
        k = torch.randn(2, built.k_len, hkv, head_dim, generator=gen, dtype=dtype)
        mask = built.mask
        if bias:
            mask = mask.with_bias(torch.randn(1, H, built.q_len, built.k_len, dtype=dtype,
                                              generator=gen).requires_grad_(grad))  # fmt: skip
        setting = f"{shape=}, {padding=}, {hkv=}, {bias=}, {grad=}"
        leaves = [t.requires_grad_(grad) for t in (q, k, k.clone())]
        with torch.set_grad_enabled(grad):
            plan = kernel.plan(AttentionCall.of(leaves[0], leaves[1], mask, v=leaves[2]))
            accepted = None
            for fields, inp in _forms(*leaves, mask, grad):
                ops = _xformers_accepts(inp, grad, xformers_cpu)
                if ops is not None:
                    accepted = (fields, ops)
                    break
        if accepted is None:
            assert not isinstance(plan, XFormersPlan), f"{setting}: xformers refuses, txblocks {plan}"
            assert plan and all("forward" in r or "backward" in r for r in plan), plan
            continue
        assert isinstance(plan, XFormersPlan), f"{setting}: xformers accepts, txblocks: {plan}"
        assert (plan.structure, plan.folded, plan.layout) == accepted[0], setting
        assert (plan.forward_op, *([plan.backward_op] if grad else [])) == accepted[1], setting


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


def test_one_row_of_seq_lens_for_the_batch(gen, xformers_cpu):
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


def test_bias_rows_are_aligned_for_xformers(gen):
    from txblocks.attention.xformers_op import xformers_inputs

    bias = torch.randn(1, H, 5, 5, generator=gen, dtype=torch.float16)
    padded = padded_bias(bias)
    q = torch.randn(3, 5, H, 8, dtype=torch.float16)
    k = torch.randn(3, 5, 2, 8, dtype=torch.float16)
    dense = xformers_inputs(q, k, k, padded, None, "expanded", 0.3, 0.0).attn_bias
    _check_tensor_bias(dense, (3, H, 5, 5))
    assert torch.equal(dense, bias.expand(3, H, 5, 5))
    grouped = xformers_inputs(q, k, k, padded, None, "groups", 0.3, 0.0).attn_bias
    _check_tensor_bias(grouped, (3, 2, H // 2, 5, 5))  # GQA: (B, G, R, Tq, Tk)
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


def test_a_call_without_a_backward_operator_fails_before_any_work(gen, xformers_cpu,
                                                                  monkeypatch):  # fmt: skip
    """Naming xformers for a call whose backward no operator runs fails at the call, with
    xformers' reasons, never in the middle of ``backward()``."""
    from xformers.ops.fmha import cutlass, flash, flash3

    from txblocks.errors import KernelUnavailableError

    for op in (cutlass.BwOp, flash.BwOp, flash3.BwOp):
        monkeypatch.setattr(op, "not_supported_reasons",
                            classmethod(lambda cls, inp: ["stands in for a refusal"]))
    monkeypatch.setattr(XFormersKernel, "why_not_on", lambda self, device: [])
    q, k, v = (torch.randn(2, 6, H, 8, generator=gen) for _ in range(3))
    mask = CausalMask(6, 6)
    with torch.no_grad():  # inference: forward operators only
        XFormersKernel()(q, k, v, mask, scale=0.3)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    with pytest.raises(KernelUnavailableError, match="no backward operator.*stands in"):
        XFormersKernel()(*leaves, mask, scale=0.3)
