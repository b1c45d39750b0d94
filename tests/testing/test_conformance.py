"""txblocks.testing: every built-in passes its conformance check, and each check can fail.

Parametrized over the registry: a new built-in of a checked kind is checked the day it is
registered (a mask needs a brute-force definition in REFERENCES first).
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch import nn

from txblocks import SpecError
from txblocks.attention import CausalMask, EagerKernel, FullMask
from txblocks.attention.kernel import AttentionKernel
from txblocks.attention.strategies import CausalStrategy, FullStrategy, PrefixLMStrategy
from txblocks.nn.positional import PositionalScheme
from txblocks.nn.positions import ALiBi, RotaryPositions
from txblocks.plugins import load_registry
from txblocks.testing import (
    check_activation,
    check_attention_kernel,
    check_component,
    check_ffn,
    check_mask_strategy,
    check_norm,
    check_positional_scheme,
)
from txblocks.attention.xformers_bias import XFormersStructure
from txblocks.testing.forms import xformers_attn_bias

KINDS = ("attention", "mask", "position", "norm", "ffn", "activation")
#: Parameters worth covering, per (kind, name); others run with their defaults only.
PARAMS = {
    ("mask", "sliding_window"): [{"window": 1}, {"window": 3}],
    ("mask", "prefix_lm"): [{}, {"length": 3}],
    ("mask", "block_diagonal"): [{"causal": True}, {"causal": False}],
    ("position", "rope"): [
        {}, {"fraction": 0.5, "interleaved": True}, {"scaling": {"type": "linear", "factor": 4.0}},
        {"scaling": {"type": "dynamic", "factor": 2.0}},
        {"scaling": {"type": "llama3", "original_max_seq_len": 16}},
    ],
    ("position", "relative_bias"): [{}, {"num_buckets": 8, "max_distance": 5}],
    ("norm", "layernorm"): [{}, {"bias": False}],
    ("ffn", "mlp"): [{}, {"activation": "relu", "hidden": 48, "dropout": 0.1}],
    ("ffn", "moe"): [
        {}, {"top_k": 1, "experts": 4, "expert": {"type": "glu", "hidden": 16}},
        {"shared_experts": 1, "shared_gate": True, "expert": {"type": "mlp", "hidden": 16}},
    ],
}  # fmt: skip
#: Brute-force definitions of the built-in masks: params -> reference(q_pos, k_pos, row).
REFERENCES = {
    "none": lambda p: lambda q, k, row: True,
    "causal": lambda p: lambda q, k, row: k <= q,
    "sliding_window": lambda p: lambda q, k, row: q - p["window"] < k <= q,
    "prefix_lm": lambda p: lambda q, k, row: k <= q or k < p.get("length", 0),
    "block_diagonal": lambda p: lambda q, k, row: k <= q if p.get("causal", True) else True,
}


@functools.cache
def _cases() -> list[tuple[str, str, dict]]:
    builtins = load_registry(autoload=False)
    return [(kind, name, params) for kind in KINDS for name in builtins.names(kind)
            for params in PARAMS.get((kind, name), [{}])]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: threads only add overhead (and contention on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("kind", "name", "params"), _cases(),
                         ids=[f"{k}-{n}-{p}" for k, n, p in _cases()])  # fmt: skip
def test_every_builtin_conforms(registry, kind, name, params):
    options = {}
    if kind == "mask":
        if name not in REFERENCES:
            pytest.fail(f"mask {name!r} has no brute-force definition in REFERENCES")
        options["reference"] = REFERENCES[name](params)
    report = check_component(registry, kind, name, check_options=options, **params)
    if kind == "attention" and not report.ran:
        pytest.skip(str(report))  # xformers without a GPU
    assert str(report).startswith(f"{report.subject}: {len(report.ran)} ran")


def test_per_row_prefixes_and_skipped_packing():
    prefixes = [0, 2, 5]
    report = check_mask_strategy(PrefixLMStrategy(), lambda q, k, row: k <= q or k < prefixes[row],
                                 prefix_lengths=prefixes)  # fmt: skip
    assert [setting for setting, _ in report.skipped] == ["packed seq_lens"]
    assert "does not support packed sequences" in str(report)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["xformers", "sdpa", "auto"])
def test_kernels_conform_on_cuda(registry, name):
    options = {"device": "cuda", "dtypes": (torch.float16,), "atol": 5e-3, "rtol": 5e-3}
    report = check_component(registry, "attention", name, check_options=options)
    assert report.ran, str(report)


# --- each check fails on a broken component ------------------------------------------------


class _Broken(AttentionKernel):
    """Eager attention with one deliberate bug."""

    name = "broken"

    def __init__(self, bug: str) -> None:
        self.bug = bug

    def attend(self, q, k, v, mask, *, scale, dropout, softcap):
        eager = EagerKernel().attend
        if self.bug == "scale":
            scale = q.shape[-1] ** -0.5
        if self.bug == "padding":
            mask = dataclasses.replace(mask, key_padding=None)
        if self.bug == "bias":
            mask = dataclasses.replace(mask, bias=None)
        if self.bug == "gqa":  # query head h uses kv head h % Hkv instead of h // (H / Hkv)
            k, v = (t.repeat(1, 1, q.shape[2] // k.shape[2], 1) for t in (k, v))
        out = eager(q, k, v, mask, scale=scale, dropout=dropout, softcap=softcap)
        if self.bug == "empty_rows":  # uniform weights instead of zeros on rows without keys
            empty = mask.empty_rows(q.device)
            if empty is not None:
                mean_v = v.mean(1, keepdim=True).repeat_interleave(q.shape[2] // k.shape[2], dim=2)
                out = out + empty.transpose(1, 2).float() * mean_v
        return out


@pytest.mark.parametrize(("bug", "match"), [
    ("scale", r"output differs: max \|diff\| .*\[mask=none, shape=square"),
    ("padding", r"differs: max \|diff\| .*padding=(right|left)"),
    ("bias", r"differs: max \|diff\| .*bias=yes"),
    ("gqa", r"differs: max \|diff\| .*Hkv=2"),
])  # fmt: skip
def test_a_broken_kernel_fails(bug, match):
    with pytest.raises(AssertionError, match=match):
        check_attention_kernel(_Broken(bug))


def test_a_kernel_with_nonzero_empty_rows_fails():
    with pytest.raises(AssertionError, match=r"rows without keys are not 0.*row 0 padded"):
        check_attention_kernel(_Broken("empty_rows"), masks=[FullStrategy()])


def test_a_kernel_reports_what_it_cannot_run():
    class NoGQA(_Broken):
        def why_not(self, call):
            reasons = super().why_not(call)
            return reasons + (["no grouped K/V heads"] if call.n_heads != call.n_kv_heads else [])

    report = check_attention_kernel(NoGQA("none"), masks=[CausalStrategy()])
    assert report.skipped and all(reason == "no grouped K/V heads" for _, reason in report.skipped)
    assert all("Hkv=4" not in setting for setting, _ in report.skipped)


class _Strategy(CausalStrategy):
    def __init__(self, make):
        self.make = make

    def __call__(self, q_len, k_len, *, key_padding=None, q_offset=None, **_):
        return self.make(q_len, k_len, key_padding=key_padding, q_offset=q_offset)


class _AlwaysIsCausal(CausalMask):
    def _sdpa_is_causal(self):
        return self.key_padding is None  # wrong when q_offset != 0


class _TopLeftForXFormers(CausalMask):
    def _xformers_structure(self):
        return XFormersStructure("LowerTriangularMask")  # wrong for a KV cache (bottom-right)


@pytest.mark.parametrize(("strategy", "reference", "match"), [
    (_Strategy(functools.partial(CausalMask, window=3)), lambda q, k, row: q - 2 < k <= q,
     r"keep\(\) differs from the reference .* key \d+: got True, expected False"),
    (_Strategy(lambda q, k, key_padding, q_offset: CausalMask(q, k, q_offset=q_offset)),
     lambda q, k, row: k <= q, r"keep\(\) differs.*padding=(right|left|empty_row)"),
    (_Strategy(_AlwaysIsCausal), lambda q, k, row: k <= q, r"sdpa\(\) is_causal=True disagrees"),
    (_Strategy(FullMask), lambda q, k, row: True, "declared causal but keeps a key after"),
])  # fmt: skip
def test_a_broken_mask_fails(strategy, reference, match):
    with pytest.raises(AssertionError, match=match):
        check_mask_strategy(strategy, reference, packed=False)


def test_a_wrong_xformers_bias_fails():
    if isinstance(xformers_attn_bias(), str):
        pytest.skip(xformers_attn_bias())
    match = r"xformers\(\) bias \(LowerTriangularMask\) disagrees"
    with pytest.raises(AssertionError, match=match):
        check_mask_strategy(_Strategy(_TopLeftForXFormers), lambda q, k, row: k <= q, packed=False)


class _MixesRows(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(x + x.mean(0, keepdim=True))


class _Unused(_MixesRows):
    def __init__(self, dim):
        super().__init__(dim)
        self.spare = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.proj(x)


def test_a_broken_ffn_fails(registry):
    mixing = r"output at batch row \(1,\) changes \(max \|diff\| .*\) when only"
    with pytest.raises(AssertionError, match=mixing):
        check_ffn(_MixesRows, 16)
    check_ffn(_MixesRows, 16, batch_independent=False)  # declared: skipped, passes
    with pytest.raises(AssertionError, match="no gradient reaches parameter 'spare'"):
        check_ffn(_Unused(16), 16)
    check_ffn(_Unused(16), 16, unused={"spare"})
    with pytest.raises(AssertionError, match=r"output is torch.float32 \(4, 16, 32\), expected"):
        check_ffn(nn.Linear(16, 32), 16)
    with pytest.raises(AssertionError, match=r"aux loss must be a scalar tensor, got \(4,\)"):
        check_ffn(lambda d: _Split(nn.Linear(d, d)), 16)
    # tokens compete for capacity: at 0.25 a changed row always moves another row's drops
    # (at 0.5 two router inits in 40 dropped the same tokens either way)
    torch.manual_seed(0)
    capacity = registry.config("ffn", "moe", capacity_factor=0.25).build(16)
    with pytest.raises(AssertionError, match="batch row"):
        check_ffn(capacity, 16, batch_independent=True)


class _Split(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), x.new_zeros(4)


class _NormOverTime(nn.Module):
    def forward(self, x):
        return x / x.norm(dim=-2, keepdim=True)


def test_a_broken_norm_fails():
    with pytest.raises(AssertionError, match=r"output at position \(1,\) changes"):
        check_norm(_NormOverTime(), 8)
    forward = lambda self, x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    no_eps = type("NoEps", (nn.Module,), {"forward": forward})
    with pytest.raises(AssertionError, match="a zero vector or a large one gives a non-finite"):
        check_norm(no_eps(), 8)


def test_a_broken_activation_fails():
    with pytest.raises(AssertionError, match="is not elementwise"):
        check_activation(nn.Softmax(dim=-1))


class _SquaredRope(RotaryPositions):
    """Rotates by p² θ: q·k then depends on m² - n², not on m - n."""

    def rotary(self, position_ids):
        return super().rotary(position_ids**2)


class _AbsoluteBias(ALiBi):
    def attention_bias(self, q_len, k_len, q_offset, causal, device, dtype):
        bias = super().attention_bias(q_len, k_len, q_offset, causal, device, dtype)
        return bias - 0.1 * (q_offset + torch.arange(q_len, device=device, dtype=dtype))[:, None]


class _NoCacheOffset(ALiBi):
    def attention_bias(self, q_len, k_len, q_offset, causal, device, dtype):
        return super().attention_bias(q_len, k_len, 0, causal, device, dtype)  # ignores q_offset


class _IndexNotPosition(PositionalScheme):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(64, 16)

    def embed(self, position_ids):
        return self.table(torch.arange(position_ids.shape[1])).expand(position_ids.shape[0], -1, -1)


@pytest.mark.parametrize(("scheme", "match"), [
    (_SquaredRope(8), r"rotated q·k \(not relative.*positions \d+\.\."),
    (_AbsoluteBias(4), r"not relative: it changes along a diagonal"),
    (_NoCacheOffset(4), r"bias \(against rows 4\.\.6 of a full 9x9 call\) differs.*q_offset=4"),
    (_IndexNotPosition(), "embed of a shifted position differs"),
])  # fmt: skip
def test_a_broken_positional_scheme_fails(scheme, match):
    with pytest.raises(AssertionError, match=match):
        check_positional_scheme(scheme, head_dim=8, n_heads=4)


def test_relative_can_be_turned_off():
    check_positional_scheme(_AbsoluteBias(4), head_dim=8, n_heads=4, relative=False)


def test_check_component_errors(registry):
    with pytest.raises(ValueError, match=r"no conformance check for kind 'head' \('lm'\); checks"):
        check_component(registry, "head", "lm")
    with pytest.raises(SpecError, match=r"eps: input should be greater than 0"):
        check_component(registry, "norm", "rmsnorm", eps=0)
    with pytest.raises(ValueError, match=r"position 'rope' does not fit .*rotary_dim"):
        check_component(registry, "position", "rope", fraction=0.125)
    with pytest.raises(LookupError, match="unknown norm 'scalenorm'"):
        check_component(registry, "norm", "scalenorm")
