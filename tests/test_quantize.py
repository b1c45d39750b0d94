"""int8 inference through torchao: `txblocks.quantize`, `quantization:` in a spec, checkpoints, CLI.

Tolerance of the logits (relative Frobenius error ``|q - f| / |f|`` over a (4, 32) batch).
Per-channel symmetric int8 rounds each weight to a grid of step ``max|w_row| / 127.5``: a
uniform error of std ``step / √12``. For a row of 64 Gaussian weights ``max|w| ≈ 2.4 σ``, so
each linear layer's output is off by ≈ 0.55 % of its scale. The tiny model has 9 linear layers
(qkv, out, up, down per block, and the head); independent errors add in quadrature (≈ 1.6 %),
and the layer norms and softmax of a 2-block model at init_std 0.3 roughly double that:
measured 3.2 % on average over 40 seeds (max 3.8 %). ``int8_dynamic`` also rounds every
activation row to int8, about as much error again: measured 4.6 % (max 5.1 %). The bounds
below are ~1.6x the worst seen; a 4-bit grid (16x coarser) or per-tensor scales would fail them.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn

import txblocks
from txblocks import cli
from txblocks.checkpoint import SPEC_KEY
from txblocks.int8_linear import Int8WeightOnlyLinear
from txblocks.tokenizer import ByteTokenizer

pytest.importorskip("torchao", reason="txblocks[quant] (torchao) is not installed")
from torchao.quantization import Int8Tensor  # noqa: E402

BOUND = {"int8_weight_only": 0.06, "int8_dynamic": 0.08}
MODES = sorted(BOUND)
TINY = {"arch": "decoder", "vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4,
        "position": "rope", "init_std": 0.3, "block": {"ffn": {"type": "mlp", "hidden": 128}}}


@pytest.fixture
def float_model(registry, gen):
    torch.manual_seed(int(torch.randint(2**31, (), generator=gen)))
    return txblocks.build(txblocks.load_spec(TINY, registry=registry)).eval()


def _ids(gen: torch.Generator, batch: int = 4, length: int = 32) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=gen)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_importing_and_building_does_not_import_torchao():
    code = ("import sys, txblocks; txblocks.build({'arch': 'decoder', 'vocab_size': 8, "
            "'d_model': 8, 'n_layers': 1, 'n_heads': 2}); print('torchao' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mode", MODES)
def test_logits_stay_within_the_int8_bound(float_model, registry, gen, mode):
    ids = _ids(gen)
    expected = _logits(float_model, ids)
    model = txblocks.quantize(copy.deepcopy(float_model), mode, registry=registry)
    found = _logits(model, ids)
    error = float((found - expected).norm() / expected.norm())
    assert 1e-4 < error < BOUND[mode], f"{mode}: relative logits error {error:.4f}"


@pytest.mark.parametrize("mode", MODES)
def test_every_linear_is_int8_head_included_and_the_embedding_stays_float(float_model, registry,
                                                                          mode):
    table = float_model.embeddings.tokens.weight.detach().clone()
    assert float_model.head.proj.weight is float_model.embeddings.tokens.weight  # tied
    model = txblocks.quantize(float_model, mode, registry=registry)
    assert model is float_model
    linears = _linears(model)
    assert "head.proj" in linears and len(linears) == 9
    for name, linear in linears.items():
        weight = linear.weight
        assert isinstance(weight, Int8Tensor), f"{name}: {type(weight).__name__}"
        assert weight.qdata.dtype == torch.int8 and weight.qdata.shape == weight.shape
        assert weight.scale.numel() == weight.shape[0], f"{name}: not one scale per row"
        assert (weight.act_quant_kwargs is not None) == (mode == "int8_dynamic")
        # weight-only products run PyTorch's int8 kernel on CPU (torchao's expands the weight)
        assert isinstance(linear, Int8WeightOnlyLinear) == (mode == "int8_weight_only")
    # The tie is undone: the head has an int8 copy, the lookup table is the float one.
    tokens = model.embeddings.tokens.weight
    assert type(tokens) is nn.Parameter and torch.equal(tokens, table)
    half_step = table.abs().amax(1, keepdim=True) / 127.5 / 2  # per row: round to nearest
    assert ((model.head.proj.weight.dequantize() - table).abs() <= half_step * 1.001).all()
    assert model.spec.quantization.type == mode


def test_greedy_tokens_mostly_agree_and_generate_runs(float_model, registry, gen):
    ids = _ids(gen)
    model = txblocks.quantize(copy.deepcopy(float_model), "int8_weight_only", registry=registry)
    expected, found = _logits(float_model, ids), _logits(model, ids)
    agreement = float((found.argmax(-1) == expected.argmax(-1)).float().mean())
    assert agreement >= 0.85, f"greedy tokens agree at {agreement:.1%} of {ids.numel()} positions"
    prompt = ids[:2, :5]
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    # With the KV cache, the first new token is the full forward's greedy choice.
    assert torch.equal(out[:, 5], _logits(model, prompt)[:, -1].argmax(-1))


@pytest.mark.parametrize("declared", ["int8_weight_only", {"type": "int8_dynamic"}])
def test_a_spec_that_declares_quantization_builds_int8(registry, declared):
    spec = txblocks.load_spec({**TINY, "quantization": declared}, registry=registry)
    model = txblocks.build(spec)
    mode = declared if isinstance(declared, str) else declared["type"]
    assert model.spec.quantization.type == mode
    assert all(isinstance(m.weight, Int8Tensor) for m in _linears(model).values())
    assert "quantization:\n  type: " + mode in model.spec.to_yaml()


def test_a_spec_with_an_unknown_quantization_lists_the_modes(registry):
    with pytest.raises(txblocks.SpecError, match=r"quantization.*int8_dynamic, int8_weight_only"):
        txblocks.load_spec({**TINY, "quantization": {"type": "int4"}}, registry=registry)


def test_quantize_rejects_an_unknown_mode_and_a_quantized_model(float_model, registry):
    with pytest.raises(txblocks.QuantizationError,
                       match=r"unknown quantization mode 'int8_weightonly'.*did you mean "
                             r"'int8_weight_only'"):
        txblocks.quantize(float_model, "int8_weightonly", registry=registry)
    assert not any(isinstance(m.weight, Int8Tensor) for m in _linears(float_model).values())
    txblocks.quantize(float_model, "int8_weight_only", registry=registry)
    with pytest.raises(txblocks.QuantizationError, match="already quantized"):
        txblocks.quantize(float_model, "int8_dynamic", registry=registry)


def test_missing_torchao_says_how_to_install_it(float_model, registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    hint = r"pip install 'txblocks\[quant\]'"
    with pytest.raises(txblocks.QuantizationError, match=hint):
        txblocks.quantize(float_model, "int8_weight_only", registry=registry)
    spec = txblocks.load_spec({**TINY, "quantization": "int8_dynamic"}, registry=registry)
    with pytest.raises(txblocks.BuildError, match=hint):  # QuantizationError is a BuildError
        txblocks.build(spec)


def test_save_refuses_a_quantized_model(float_model, registry, tmp_path):
    txblocks.quantize(float_model, "int8_weight_only", registry=registry)
    path = tmp_path / "q.safetensors"
    with pytest.raises(txblocks.CheckpointError,
                       match=r"(?s)cannot save.*quantized \(9 int8 linear layers.*save the float"):
        txblocks.save(float_model, path)
    assert list(tmp_path.iterdir()) == []


def test_a_float_checkpoint_does_not_mention_quantization(float_model, tmp_path):
    path = tmp_path / "f.safetensors"
    txblocks.save(float_model, path)
    with safe_open(str(path), framework="pt") as f:
        assert "quantization" not in json.loads(f.metadata()[SPEC_KEY])


def test_load_quantizes_after_the_float_weights_when_the_spec_declares_it(float_model, registry,
                                                                          gen, tmp_path):
    declared = txblocks.load_spec({**float_model.spec.model_dump(mode="json"),
                                   "quantization": "int8_dynamic"}, registry=registry)
    float_model.spec = declared  # a float model whose spec asks for int8 at load time
    path = tmp_path / "declared.safetensors"
    txblocks.save(float_model, path)
    loaded = txblocks.load(path, registry=registry)
    assert loaded.spec.quantization.type == "int8_dynamic" and not loaded.training
    assert all(isinstance(m.weight, Int8Tensor) for m in _linears(loaded).values())
    reference = txblocks.quantize(copy.deepcopy(float_model), "int8_dynamic", registry=registry)
    ids = _ids(gen, 2, 12)
    torch.testing.assert_close(_logits(loaded, ids), _logits(reference, ids), rtol=0, atol=0)


@pytest.fixture
def checkpoint(registry, tmp_path):
    torch.manual_seed(7)
    model = txblocks.build(txblocks.load_spec(TINY, registry=registry))
    path = tmp_path / "tiny.safetensors"
    txblocks.save(model, path)
    return model.eval(), path


@pytest.mark.parametrize(("flag", "mode"), [("int8", "int8_weight_only"),
                                            ("int8-dynamic", "int8_dynamic")])
def test_cli_generate_quantize(checkpoint, registry, capsys, monkeypatch, flag, mode):
    model, path = checkpoint
    module, calls = sys.modules["txblocks.quantize"], []

    def spy(model: nn.Module, mode: str, **kwargs: object) -> nn.Module:
        calls.append(mode)
        out = real(model, mode, **kwargs)
        assert all(isinstance(m.weight, Int8Tensor) for m in _linears(out).values())
        return out

    real = module.quantize
    monkeypatch.setattr(module, "quantize", spy)
    argv = ["generate", str(path), "--prompt", "abc", "--max-new-tokens", "8", "--quantize", flag]
    assert cli.main(argv) == 0
    assert calls == [mode]
    quantized = txblocks.quantize(model, mode, registry=registry)
    new = quantized.generate(torch.tensor([list(b"abc")]), max_new_tokens=8)[0, 3:].tolist()
    assert capsys.readouterr().out == "abc" + ByteTokenizer().decode(new) + "\n"


def test_cli_generate_rejects_an_unknown_quantize_mode(checkpoint, capsys):
    _, path = checkpoint
    assert cli.main(["generate", str(path), "--prompt", "a", "--quantize", "int4"]) == 1
    assert "unknown --quantize 'int4'; choose int8, int8-dynamic" in capsys.readouterr().out


def test_cli_generate_on_a_checkpoint_that_declares_quantization(checkpoint, registry, tmp_path,
                                                                 capsys):
    model, _ = checkpoint
    model.spec = txblocks.load_spec({**model.spec.model_dump(mode="json"),
                                     "quantization": "int8_weight_only"}, registry=registry)
    path = tmp_path / "declared.safetensors"
    txblocks.save(model, path)
    assert cli.main(["generate", str(path), "--prompt", "abc", "--max-new-tokens", "4"]) == 0
    quantized = txblocks.quantize(model, "int8_weight_only", registry=registry)
    new = quantized.generate(torch.tensor([list(b"abc")]), max_new_tokens=4)[0, 3:].tolist()
    assert capsys.readouterr().out == "abc" + ByteTokenizer().decode(new) + "\n"
    assert cli.main(["generate", str(path), "--prompt", "a", "--quantize", "int8"]) == 1
    assert "already declares quantization 'int8_weight_only'" in capsys.readouterr().out


@pytest.mark.parametrize("bias", [True, False])
def test_the_int8_kernel_computes_x_times_the_dequantized_weight(gen, bias):
    # Reference: plain float math on torchao's int8 data and scales. The kernel rounds the
    # activations to bfloat16 (relative error <= 2^-9 each); over 96 products of random sign
    # that stays far below 1 % of the output's largest value, while a wrong scale, a
    # transposed weight or a dropped bias is off by tens of percent.
    linear = nn.Linear(96, 40, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 96, generator=gen))
        if bias:
            linear.bias.copy_(torch.randn(40, generator=gen))
    model = nn.Sequential(linear)
    txblocks.quantize(model, "int8_weight_only")
    fast = model[0]
    assert isinstance(fast, Int8WeightOnlyLinear)
    x = torch.randn(3, 7, 96, generator=gen)
    weight = fast.weight.qdata.float() * fast.weight.scale.reshape(-1, 1).float()
    want = x @ weight.T + (fast.bias if bias else 0)
    with torch.no_grad():
        got = fast(x)
    assert got.dtype == x.dtype and got.shape == (3, 7, 40)
    assert (got - want).abs().max() <= 0.01 * want.abs().max()


@pytest.mark.parametrize("in_features", [8, 24, 40])
def test_widths_the_int8_kernel_gets_wrong_stay_with_torchao(gen, in_features):
    """PyTorch's int8 CPU kernel is off by hundreds (or crashes) when the input width is not
    a multiple of 16: such layers keep torchao's product, which is right."""
    linear = nn.Linear(in_features, 32)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, in_features, generator=gen))
    model = nn.Sequential(linear)
    txblocks.quantize(model, "int8_weight_only")
    assert not isinstance(model[0], Int8WeightOnlyLinear)
    x = torch.randn(5, in_features, generator=gen)
    weight = model[0].weight
    dequantized = weight.qdata.float() * weight.scale.reshape(-1, 1).float()
    with torch.no_grad():
        got = model(x)
    want = x @ dequantized.T + model[0].bias
    assert (got - want).abs().max() <= 0.01 * want.abs().max()
