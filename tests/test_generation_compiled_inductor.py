"""The compiled decoding step with inductor, and its streaming CPU products.

The other compiled-decoding tests trace with the eager backends (quick, the same graph);
these run inductor itself, with the graph pass that turns a step's small-row CPU products
and one-query attention into streaming reductions
(txblocks/generation/streaming_matvec.py). Each rewrite is checked against the operation it
replaces on fresh random inputs, the pass against a traced graph, and the whole step against
eager decoding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import txblocks
from txblocks.generation.onednn_linear import onednn_available
from txblocks.generation.streaming_matvec import (
    MAX_ROWS,
    MAX_ROWS_CONVERTED,
    StreamingMatVec,
    streaming_attention,
    streaming_int8_mm,
    streaming_linear,
)

TINY = {"extends": "llama", "arch": "decoder", "n_layers": 2, "d_model": 32, "n_heads": 4,
        "n_kv_heads": 2, "vocab_size": 64, "max_seq_len": 128, "init_std": 0.2,
        "block": {"ffn": {"hidden": 64}}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_streaming_linear_is_linear(gen, dtype, bias, rows):
    x = torch.randn(*rows, 48, generator=gen).to(dtype)
    w = torch.randn(24, 48, generator=gen).to(dtype)
    b = torch.randn(24, generator=gen).to(dtype) if bias else None
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bfloat16: the output's own rounding
    torch.testing.assert_close(streaming_linear(x, w, b).double(), want, atol=tol, rtol=tol)
    assert streaming_linear(x, w, b).dtype == dtype


@pytest.mark.parametrize("rows", [1, 3])
def test_streaming_int8_mm_is_the_int8_kernel(gen, rows):
    x = torch.randn(rows, 64, generator=gen).to(torch.bfloat16)
    w = torch.randint(-128, 128, (40, 64), generator=gen, dtype=torch.int8)
    scales = (torch.rand(40, generator=gen) / 50).to(torch.bfloat16)
    want = torch.ops.aten._weight_int8pack_mm(x, w, scales).float()
    torch.testing.assert_close(streaming_int8_mm(x, w, scales).float(), want, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("kv_heads", [8, 4, 1])
@pytest.mark.parametrize("mask", ["none", "float", "bool", "per_head"])
def test_streaming_attention_is_sdpa(gen, kv_heads, mask):
    q = torch.randn(3, 8, 1, 16, generator=gen) * 2  # scaled up: sharp attention
    k, v = (torch.randn(3, kv_heads, 40, 16, generator=gen) for _ in range(2))
    masks = {"none": None, "float": torch.randn(3, 1, 1, 40, generator=gen) * 3,
             "bool": torch.rand(3, 1, 1, 40, generator=gen) > 0.3,
             "per_head": torch.randn(1, 8, 1, 40, generator=gen)}
    kw = {"attn_mask": masks[mask], "scale": 0.3, "enable_gqa": kv_heads < 8}
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **{
        **kw, "attn_mask": None if masks[mask] is None else
        masks[mask] if mask == "bool" else masks[mask].double()})
    torch.testing.assert_close(streaming_attention(q, k, v, **kw).double(), want, atol=1e-5, rtol=1e-5)


def test_the_pass_rewrites_small_row_cpu_products_and_one_query_attention_only():
    seen: list[str] = []

    def backend(gm, example_inputs):
        StreamingMatVec()(gm.graph)
        gm.recompile()
        seen.extend(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
                    if n.op == "call_function")
        return gm.forward

    def f(x, wide, w, q, k, v, q2, wide16, w16, x16):
        return (F.linear(x, w), F.linear(wide, w), F.scaled_dot_product_attention(q, k, v),
                F.scaled_dot_product_attention(q2, k, v), F.linear(wide16, w16), F.linear(x16, w16))

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(MAX_ROWS, 1, 8, generator=g), torch.randn(MAX_ROWS + 1, 1, 8, generator=g),
            torch.randn(4, 8, generator=g), torch.randn(1, 2, 1, 8, generator=g),
            torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g),
            torch.randn(1, 2, 3, 8, generator=g),
            torch.randn(MAX_ROWS_CONVERTED + 1, 8, generator=g).bfloat16(),
            torch.randn(4, 8, generator=g).bfloat16(),
            torch.randn(MAX_ROWS_CONVERTED, 8, generator=g).bfloat16()]
    torch._dynamo.reset()
    got = torch.compile(f, backend=backend, fullgraph=True)(*args)
    torch._dynamo.reset()
    assert seen.count("streaming_linear") == 2  # MAX_ROWS float32, MAX_ROWS_CONVERTED bf16
    assert seen.count("streaming_attention") == 1  # the 3-position query stays SDPA
    # MAX_ROWS + 1 float32 rows go to oneDNN; MAX_ROWS_CONVERTED + 1 bfloat16 stay a linear
    assert seen.count("onednn_linear.default") == (1 if onednn_available() else 0)
    assert seen.count("linear") == (1 if onednn_available() else 2)
    assert seen.count("scaled_dot_product_attention") == 1
    for a, b in zip(got, f(*args), strict=True):
        torch.testing.assert_close(a, b, atol=1e-2 if a.dtype == torch.bfloat16 else 1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, MAX_ROWS + 1])
def test_inductor_step_equals_eager(registry, batch):
    """Batch 1 and 3: the products (a weight row read once for all rows) and the attention
    stream; past MAX_ROWS the attention only."""
    torch.manual_seed(0)
    model = txblocks.build(txblocks.load_spec(TINY, registry=registry)).eval()
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(1, 64, (batch, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, :2] = 0 if batch > 1 else 1  # left padding in a batch
    want = model.generate(ids, mask, max_new_tokens=12)
    got = model.generate(ids, mask, max_new_tokens=12, compile=True)
    assert torch.equal(got, want), f"\neager    {want}\ncompiled {got}"


@pytest.mark.parametrize("width", [32, 24])
def test_inductor_int8_step_equals_eager(registry, width):
    """int8 weight-only: width 32 runs PyTorch's int8 kernel (rewritten as a streaming
    reduction), width 24 torchao's Int8Tensor weight (a tensor subclass: left to its own
    dispatch)."""
    pytest.importorskip("torchao")
    spec = {**TINY, "d_model": width, "block": {"ffn": {"hidden": 40}}}
    torch.manual_seed(0)
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    model = txblocks.quantize(model, "int8_weight_only")
    ids = torch.randint(1, 64, (1, 7), generator=torch.Generator().manual_seed(2))
    want = model.generate(ids, max_new_tokens=12)
    got = model.generate(ids, max_new_tokens=12, compile=True)
    assert torch.equal(got, want), f"\neager    {want}\ncompiled {got}"


@pytest.mark.parametrize(("base", "arch", "overrides"), [
    ("mixtral", "decoder", {"block": {"ffn": {"experts": 4, "expert": {"hidden": 48}}}}),
    ("t5-small", "seq2seq", {"head_dim": 8, "block": {"ffn": {"hidden": 64}}}),
], ids=["mixtral", "t5-small"])
def test_inductor_step_equals_eager_for_moe_and_cross_attention(registry, base, arch, overrides):
    """Batch 1: the experts' products and the cross-attention over the encoder (a padded
    source's key mask, T5's per-head relative bias) stream too."""
    torch.manual_seed(0)
    spec = {**TINY, "extends": base, "arch": arch, "n_kv_heads": 4 if arch == "seq2seq" else 2,
            **overrides}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    ids = torch.randint(2, 64, (1, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if arch == "seq2seq":
        mask[0, 5:] = 0  # a padded source
    settings = {"max_new_tokens": 10, "decoder_start_token_id": 1} if arch == "seq2seq" else \
        {"max_new_tokens": 10}
    want = model.generate(ids, mask, **settings)
    got = model.generate(ids, mask, **settings, compile=True)
    assert torch.equal(got, want), f"\neager    {want}\ncompiled {got}"
