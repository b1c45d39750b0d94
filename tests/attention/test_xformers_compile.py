"""torch.compile(fullgraph=True) traces models on the xformers path, forward and backward.

How this is shown without a GPU: a CPU-only build of torch cannot index fake CUDA tensors
(its indexing takes a CUDA device guard), so the model runs on CPU tensors while
``txblocks.testing.xformers_on_cpu`` lets xformers' own operators, dispatch and
``Inputs`` accept the CPU (plain math stands in for the CUDA kernels only). The trace
then goes exactly through the GPU path: the plan (``assume_constant_result``), the
``txblocks::xformers_attention`` custom op with its fake implementation (dynamo runs it on
fake tensors to trace), and its autograd formula (AOTAutograd traces the backward op).
``torch.library.opcheck`` checks the op's fake implementation and autograd registration.
On a GPU, the ``cuda`` test compiles with inductor and compares with eager.
"""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.attention.xformers_kernel import XFormersKernel

pytest.importorskip("xformers.ops")

from txblocks.testing import xformers_on_cpu  # noqa: E402

MASKS = ["causal", {"type": "sliding_window", "window": 3}, {"type": "prefix_lm", "length": 3}]


@pytest.fixture
def xformers_cpu(monkeypatch):
    monkeypatch.setattr(XFormersKernel, "why_not_on", lambda self, device: [])
    return xformers_on_cpu.patch(monkeypatch)


def _model(registry, position, n_kv_heads=2):
    spec = {"arch": "decoder", "vocab_size": 50, "max_seq_len": 32, "d_model": 32,
            "n_layers": len(MASKS), "n_heads": 4, "n_kv_heads": n_kv_heads, "position": position,
            "block": {"attention": {"kernel": "xformers"}},
            "layers": [{"select": i, "attention": {"mask": m}} for i, m in enumerate(MASKS)]}
    return txblocks.build(txblocks.load_spec(spec, registry=registry))


def _loss_and_grads(model, ids, mask):
    model.zero_grad()
    loss = model(ids, mask).logits.float().pow(2).mean()
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_xformers_path_compiles_fullgraph_forward_and_backward(registry, gen, position,
                                                               xformers_cpu):  # fmt: skip
    model = _model(registry, position)
    ids = torch.randint(0, 50, (2, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    want = _loss_and_grads(model, ids, mask)
    assert xformers_cpu, "the eager run did not go through xformers"
    xformers_cpu.clear()
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=lambda g, _: g)(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=count)
    got = _loss_and_grads(compiled, ids, mask)
    assert len(graphs) == 1
    ops = {n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    assert torch.ops.txblocks.xformers_attention.default in ops
    assert xformers_cpu, "the compiled run did not go through xformers"
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_device_check_is_a_constant_under_compile():
    """``why_not_on`` runs a tiny attention once per device; a compiled forward keeps the
    answer instead of tracing it."""
    from txblocks.attention.xformers_kernel import _device_problem

    def fn(x):
        return x + (1.0 if _device_problem("cpu") else 0.0)

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="eager")(torch.zeros(2))
    assert torch.equal(got, torch.ones(2))  # xformers cannot run on the CPU: a problem


def test_custom_op_passes_opcheck(gen, xformers_cpu):
    from txblocks.attention.xformers_op import attention

    q = torch.randn(2, 6, 4, 8, generator=gen, requires_grad=True)
    k, v = (torch.randn(2, 6, 2, 8, generator=gen, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 4, 6, 8, generator=gen, requires_grad=True)  # rows padded to 8
    for args in [
        (q, k, v, None, "LowerTriangularMask", 0, [], "expanded", 0.3, 0.0, "cutlassF-pt",
         "cutlassB-pt"),
        (q, k, v, bias, "", 0, [], "expanded", 0.3, 0.0, "cutlassF-pt", "cutlassB-pt"),
        (q.detach(), k.detach(), v.detach(), None,  # inference: 5-D groups, no backward
         "LowerTriangularFromBottomRightLocalAttentionMask", 3, [], "groups", 0.3, 0.0,
         "cutlassF-pt", ""),
    ]:  # fmt: skip
        torch.library.opcheck(attention, args)


@pytest.mark.cuda
@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_xformers_compiles_with_inductor_on_cuda(registry, gen, n_kv_heads):
    kernel = XFormersKernel()
    if kernel.why_not_on(torch.device("cuda")):
        pytest.skip("; ".join(kernel.why_not_on(torch.device("cuda"))))
    model = _model(registry, "rope", n_kv_heads).to("cuda", torch.bfloat16)
    ids = torch.randint(0, 50, (2, 64), generator=gen).cuda()
    mask = torch.ones_like(ids)
    want = _loss_and_grads(model, ids, mask)
    torch._dynamo.reset()
    got = _loss_and_grads(torch.compile(model, fullgraph=True), ids, mask)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
