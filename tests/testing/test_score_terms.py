"""txblocks.testing's check of a positional scheme's score term (``score_bias``): a correct
scheme passes, and each deliberately broken one fails with a message naming the property."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from txblocks.nn.positional import PositionalScheme, has_score_bias
from txblocks.testing import check_positional_scheme

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


class _ContentPosition(PositionalScheme):
    """A small disentangled-style term: ``q_i·E[δ] + k_j·E[δ]`` with ``δ = clamp(i - j)``
    (both through one table per head, GQA keys repeated), times the attention's scale."""

    def __init__(self, span: int = 4) -> None:
        super().__init__()
        self.span = span
        self.table = nn.Parameter(torch.randn(2 * span + 1, HEADS, HEAD_DIM))

    def index(self, q_len, k_len, q_offset, device):
        q = torch.arange(q_len, device=device)[:, None] + q_offset
        k = torch.arange(k_len, device=device)[None, :]
        return (q - k).clamp(-self.span, self.span) + self.span  # (Tq, Tk)

    def score_bias(self, q, k, attention, *, layer, q_offset):
        rows = self.table[self.index(q.shape[1], k.shape[1], q_offset, q.device)]  # Tq Tk H D
        keys = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        c2p = torch.einsum("bqhd,qkhd->bhqk", q, rows)
        p2c = torch.einsum("bkhd,qkhd->bhqk", keys, rows)
        return (c2p + p2c) * attention.scale


def test_a_correct_score_term_passes():
    scheme = _ContentPosition()
    assert has_score_bias(scheme) and not has_score_bias(PositionalScheme())
    report = check_positional_scheme(scheme, head_dim=HEAD_DIM, n_heads=HEADS,
                                     n_kv_heads=KV_HEADS, n_layers=2)  # fmt: skip
    ran = [line for line in report.ran if line.startswith("score_bias")]
    assert len(ran) == 2 and all("relative" in line for line in ran), str(report)


def test_a_scheme_without_score_term_is_skipped():
    report = check_positional_scheme(PositionalScheme(), head_dim=HEAD_DIM, n_heads=HEADS)
    assert any(setting == "score_bias" for setting, _ in report.skipped)


class _Transposed(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        return super().score_bias(q, k, attention, layer=layer, q_offset=q_offset).transpose(-1, -2)


class _Constant(_ContentPosition):
    """Positions only: a term that belongs in attention_bias."""

    def score_bias(self, q, k, attention, *, layer, q_offset):
        rows = self.table[self.index(q.shape[1], k.shape[1], q_offset, q.device)].sum(-1)
        return rows.permute(2, 0, 1)[None]


class _Detached(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        return super().score_bias(q.detach(), k.detach(), attention, layer=layer,
                                  q_offset=q_offset).detach()  # fmt: skip


class _NoCacheOffset(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        return super().score_bias(q, k, attention, layer=layer, q_offset=0)  # ignores q_offset


class _Absolute(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        term = super().score_bias(q, k, attention, layer=layer, q_offset=q_offset)
        rows = torch.arange(q.shape[1], dtype=q.dtype) + q_offset
        return term + 0.1 * rows[:, None]


class _MixesRows(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        return super().score_bias(q.mean(0, keepdim=True).expand_as(q), k, attention,
                                  layer=layer, q_offset=q_offset)  # fmt: skip


class _NotFinite(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        return super().score_bias(q, k, attention, layer=layer, q_offset=q_offset).log()


class _WrongDtype(_ContentPosition):
    def score_bias(self, q, k, attention, *, layer, q_offset):
        return super().score_bias(q, k, attention, layer=layer, q_offset=q_offset).double()


@pytest.mark.parametrize(("scheme", "match"), [
    (_Transposed(), r"score term has shape \(2, 4, 9, 9\)|score term has shape \(2, 4, 7, 3\)"),
    (_Constant(), "does not change when q and k change"),
    (_Detached(), "carries no gradient"),
    (_NoCacheOffset(), r"score term \(against rows 4\.\.6 of a full 9x9 call\) differs.*q_offset=4"),
    (_Absolute(), r"not relative: it changes along a diagonal"),
    (_MixesRows(), "score term of batch row 1 computed alone"),
    (_NotFinite(), "score term is not finite"),
    (_WrongDtype(), "score term is torch.float64, expected q's torch.float32"),
])  # fmt: skip
def test_a_broken_score_term_fails(scheme, match):
    with pytest.raises(AssertionError, match=match):
        check_positional_scheme(scheme, head_dim=HEAD_DIM, n_heads=HEADS, n_kv_heads=KV_HEADS)


# --- the term through a built model: every layer, every kernel, a KV cache -------------------


class _Recorder(_ContentPosition):
    """Records the (layer, q_offset) of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def score_bias(self, q, k, attention, *, layer, q_offset):
        self.calls.append((layer, q_offset))
        return super().score_bias(q, k, attention, layer=layer, q_offset=q_offset)


def _registry():
    from txblocks import ComponentConfig, load_registry

    class ContentTestConfig(ComponentConfig):
        """A test score term."""

    registry = load_registry(autoload=False)
    registry.add("position", "content_test", lambda dims, config: _Recorder(), ContentTestConfig)
    return registry


def _model(kernel: str, arch: str = "decoder"):
    import txblocks

    torch.manual_seed(0)
    spec = {"arch": arch, "vocab_size": 40, "max_seq_len": 32, "d_model": 32, "n_layers": 3,
            "n_heads": HEADS, "n_kv_heads": KV_HEADS, "position": "content_test",
            "block": {"attention": {"kernel": kernel}}}  # fmt: skip
    return txblocks.build(spec, registry=_registry()).eval()


def test_the_stack_hands_each_layer_its_term_and_every_kernel_runs_it():
    ids = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    outputs = []
    for kernel in ("eager", "sdpa"):
        model = _model(kernel)
        out = model(ids, attention_mask=mask).logits
        assert model.position.calls == [(0, 0), (1, 0), (2, 0)]
        out[mask.bool()].sum().backward()
        assert model.position.table.grad.abs().sum() > 0
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    plain = _model("eager")
    plain.position.score_bias = lambda *args, **kwargs: None
    with torch.no_grad():
        assert (plain(ids, attention_mask=mask).logits - outputs[0]).abs().max() > 1e-3


def test_a_kv_cache_gives_each_step_its_query_offset():
    model = _model("eager")
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 9)
        steps = [model(ids[:, :5], cache=cache).logits]
        model.position.calls.clear()
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(5, 9)]
    assert model.position.calls[:3] == [(0, 5), (1, 5), (2, 5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
