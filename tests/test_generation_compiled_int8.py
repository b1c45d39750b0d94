"""generate(compile=True) on int8 weight-only models (``txblocks.quantize``).

Linear layers whose input width is a multiple of 16 run PyTorch's int8 CPU kernel
(``aten::_weight_int8pack_mm``, :mod:`txblocks.int8_linear`); the others run torchao's
``Int8Tensor`` product. Both must trace into the compiled step and give the eager int8
model's greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.int8_linear import Int8WeightOnlyLinear

pytest.importorskip("torchao")

TRACE = {"compile": True, "compile_backend": "eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _int8(registry, spec):
    torch.manual_seed(0)
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    return txblocks.quantize(model, "int8_weight_only", registry=registry)


def _prompts(batch: int = 2, length: int = 7):
    ids = torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize("d_model", [32, 24])  # 24: no layer takes the int8 kernel
def test_int8_decoder_greedy_equals_the_eager_int8_model(registry, d_model):
    spec = {"extends": "llama", "arch": "decoder", "n_layers": 2, "d_model": d_model,
            "n_heads": 4, "n_kv_heads": 2, "vocab_size": 64, "max_seq_len": 64, "init_std": 0.2,
            "block": {"ffn": {"hidden": 64}}}
    model = _int8(registry, spec)
    kernels = [m for m in model.modules() if isinstance(m, Int8WeightOnlyLinear)]
    if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        # widths 32 and 64 take the kernel; width 24 none but the ffn's down projection (64)
        assert len(kernels) == (2 * 4 + 1 if d_model == 32 else 2)
    ids, mask = _prompts()
    expected = model.generate(ids, mask, max_new_tokens=10)
    got = model.generate(ids, mask, max_new_tokens=10, compile=True, compile_backend="aot_eager")
    assert torch.equal(got, expected)


def test_int8_seq2seq_greedy_equals_the_eager_int8_model(registry):
    spec = {"extends": "t5-small", "arch": "seq2seq", "n_layers": 2, "d_model": 32, "n_heads": 4,
            "head_dim": 8, "vocab_size": 64, "max_seq_len": 64, "init_std": 0.2,
            "block": {"ffn": {"hidden": 64}}}
    model = _int8(registry, spec)
    ids, _ = _prompts()
    expected = model.generate(ids, max_new_tokens=8)
    assert torch.equal(model.generate(ids, max_new_tokens=8, **TRACE), expected)
