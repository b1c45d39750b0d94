"""Generation's float32 CPU products through oneDNN (txblocks/generation/onednn_linear.py).

The operator is checked against float64 ``x @ W.T + b`` on fresh random inputs; the mode
against what it must leave alone (gradients, bfloat16, tensor subclasses, 1-D inputs, other
devices); eager and compiled decoding against decoding without it, token for token; and a
stream's caller must never run inside the mode.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

import txblocks
from txblocks.generation import onednn_linear as onednn
from txblocks.generation.onednn_linear import OneDnnLinear, onednn_linear, onednn_linear_op
from txblocks.generation.streaming_matvec import MAX_ROWS

pytestmark = pytest.mark.skipif(not onednn.onednn_available(),
                                reason="this PyTorch build has no oneDNN (mkldnn)")

GPT = {"extends": "gpt2", "n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 96,
       "max_seq_len": 128, "init_std": 0.2}


def _ops(fn) -> set[str]:
    """The operator names that ``fn()`` dispatches."""
    with profile() as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48), (3, 1, 48)])
@pytest.mark.parametrize("bias", [False, True])
def test_the_operator_is_linear(gen, shape, bias):
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(24, 48, generator=gen)
    b = torch.randn(24, generator=gen) if bias else None
    want = x.double() @ w.double().T + (0 if b is None else b.double())
    got = onednn_linear_op(x, w, b)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    torch.library.opcheck(onednn_linear_op, (x, w, b))


def test_the_mode_sends_float32_cpu_products_to_onednn(gen):
    x, w, b = torch.randn(4, 48, generator=gen), torch.randn(24, 48, generator=gen), torch.randn(24, generator=gen)

    def run():
        with OneDnnLinear():
            return F.linear(x, w, b)

    names = _ops(run)
    assert "mkldnn::_linear_pointwise" in names and "aten::addmm" not in names
    torch.testing.assert_close(run().double(), x.double() @ w.double().T + b.double(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["grad", "bf16", "one_dim", "int_bias", "autocast"])
def test_the_mode_leaves_other_products_alone(gen, case):
    x, w = torch.randn(4, 48, generator=gen), torch.randn(24, 48, generator=gen)
    b = None
    if case == "grad":
        w.requires_grad_(True)
    elif case == "bf16":
        x, w = x.bfloat16(), w.bfloat16()
    elif case == "one_dim":
        x = x[0]
    else:
        b = torch.ones(24, dtype=torch.float64)
        x, w = x.double(), w.double()  # float64 products stay aten's too

    def run():
        with OneDnnLinear(), torch.autocast("cpu", torch.bfloat16, enabled=case == "autocast"):
            return F.linear(x, w, b)

    assert "mkldnn::_linear_pointwise" not in _ops(run)
    with torch.autocast("cpu", torch.bfloat16, enabled=case == "autocast"):
        want = F.linear(x, w, b)  # under autocast: a bfloat16 product
    torch.testing.assert_close(run(), want)
    if case == "grad":  # the gradient still flows
        run().sum().backward()
        assert w.grad is not None


def test_the_mode_leaves_tensor_subclasses_alone(gen):
    class Marked(torch.Tensor):
        pass

    x = torch.randn(4, 48, generator=gen)
    w = torch.randn(24, 48, generator=gen).as_subclass(Marked)
    with OneDnnLinear():
        names = _ops(lambda: F.linear(x, w))
    assert "mkldnn::_linear_pointwise" not in names


def test_the_context_is_a_no_op_off_float32_cpu(gen):
    model = torch.nn.Linear(8, 4).bfloat16()
    with onednn_linear(model):
        assert not torch.overrides._get_current_function_mode_stack()
    with onednn_linear(torch.nn.Linear(8, 4)):
        assert isinstance(torch.overrides._get_current_function_mode_stack()[-1], OneDnnLinear)


@pytest.fixture
def gpt(registry):
    torch.manual_seed(0)
    return txblocks.build(txblocks.load_spec(GPT, registry=registry)).eval()


def _without_onednn(monkeypatch, fn):
    with monkeypatch.context() as patch:
        patch.setattr(onednn, "onednn_available", lambda: False)
        return fn()


@pytest.mark.parametrize("batch", [1, 3])
def test_eager_decoding_is_unchanged_and_runs_onednn(gpt, monkeypatch, batch):
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(1, 96, (batch, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, :3] = 0 if batch > 1 else 1
    want = _without_onednn(monkeypatch, lambda: gpt.generate(ids, mask, max_new_tokens=10))
    names = _ops(lambda: gpt.generate(ids, mask, max_new_tokens=10))
    assert "mkldnn::_linear_pointwise" in names
    assert torch.equal(gpt.generate(ids, mask, max_new_tokens=10), want)
    assert "mkldnn::_linear_pointwise" not in _ops(
        lambda: _without_onednn(monkeypatch, lambda: gpt.generate(ids, mask, max_new_tokens=2)))


def test_beam_search_is_unchanged(gpt, monkeypatch):
    ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(5))
    settings = {"max_new_tokens": 6, "num_beams": 3}
    want = _without_onednn(monkeypatch, lambda: gpt.generate(ids, **settings))
    assert torch.equal(gpt.generate(ids, **settings), want)


def test_a_streams_caller_runs_outside_the_mode(gpt):
    ids = torch.randint(1, 96, (1, 5), generator=torch.Generator().manual_seed(2))
    for compile in (False, True):
        count = 0
        for _ in gpt.stream(ids, max_new_tokens=4, compile=compile, compile_backend="eager"):
            assert not torch.overrides._get_current_function_mode_stack()
            count += 1
        assert count == 4


def test_the_compiled_step_past_the_streamed_rows_calls_onednn(gpt, monkeypatch):
    """MAX_ROWS + 1 rows do not stream: the step's float32 products are the oneDNN operator,
    and the tokens are eager decoding's."""
    ids = torch.randint(1, 96, (MAX_ROWS + 1, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    torch._dynamo.reset()
    names = _ops(lambda: gpt.generate(ids, mask, max_new_tokens=8, compile=True))
    assert "txblocks::onednn_linear" in names
    want = _without_onednn(monkeypatch, lambda: gpt.generate(ids, mask, max_new_tokens=8))
    assert torch.equal(gpt.generate(ids, mask, max_new_tokens=8, compile=True), want)


def test_a_model_its_user_compiled_still_generates(gpt):
    """``model.compile()`` traces the forward under the mode: the trace keeps ``F.linear``
    (inductor lowers oneDNN's operator only for frozen weights, and failed on it)."""
    ids = torch.randint(1, 96, (2, 5), generator=torch.Generator().manual_seed(4))
    want = gpt.generate(ids, max_new_tokens=4)
    torch._dynamo.reset()
    gpt.compile()
    try:
        assert torch.equal(gpt.generate(ids, max_new_tokens=4), want)
    finally:
        torch._dynamo.reset()
