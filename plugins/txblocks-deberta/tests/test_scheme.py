"""The ``disentangled`` scheme against plain math written from DeBERTa-v2's formula, its log
buckets against ``transformers``' own, and ``txblocks.testing``'s conformance check."""

from __future__ import annotations

import math

import pytest
import torch
from txblocks_deberta import DisentangledPositions, log_bucket_position, plugin, relative_index

from txblocks import load_registry
from txblocks.attention import EagerKernel
from txblocks.nn.attention import Attention
from txblocks.nn.dims import ModelDims
from txblocks.testing import check_component, check_positional_scheme


def _hf_buckets(relative: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    deberta = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
    return deberta.make_log_bucket_position(relative, buckets, max_position).long()


@pytest.mark.parametrize(("buckets", "max_position"), [(16, 32), (256, 512), (8, 100), (4, 5)])
def test_log_buckets_are_transformers_buckets(buckets, max_position):
    relative = torch.arange(-3 * max_position, 3 * max_position + 1)
    got = log_bucket_position(relative, buckets, max_position)
    assert torch.equal(got, _hf_buckets(relative, buckets, max_position))
    mid = buckets // 2
    inside = relative.abs() <= mid
    assert torch.equal(got[inside], relative[inside])  # exact near the query
    assert torch.equal(got, -got.flip(0))  # odd
    assert got[relative == max_position - 1].item() == buckets - 1


def _bucket(r: int, buckets: int, max_position: int) -> int:
    """One relative position's bucket, in scalar math (He et al. 2021, v2 code)."""
    mid = buckets // 2
    if buckets <= 0 or abs(r) <= mid:
        return r
    log_pos = math.ceil(math.log(abs(r) / mid) / math.log((max_position - 1) / mid) * (mid - 1))
    return int(math.copysign(log_pos + mid, r))


def _reference(scheme: DisentangledPositions, q, k, attention: Attention, layer: int,
               q_offset: int) -> torch.Tensor:
    """score(i, j) = (q_i·Pk[δ] + k_j·Pq[δ]) · scale, δ = clamp(bucket(i - j), -S, S - 1) + S,
    one pair at a time, in float64 (no gather, no einsum)."""
    table = scheme.relative_embeddings().double()
    if scheme.share_att_key and not hasattr(attention, "qkv"):
        q_proj, k_proj = attention.q, attention.k
        pos_q = table @ q_proj.weight.double().t() + q_proj.bias.double()
        pos_k = table @ k_proj.weight.double().t() + k_proj.bias.double()
    elif scheme.share_att_key:
        weight = attention.qkv.weight.double()
        bias = attention.qkv.bias.double()
        hd = scheme.head_dim
        wq, wk = weight[: scheme.n_heads * hd], weight[scheme.n_heads * hd :][: scheme.n_kv_heads * hd]
        bq, bk = bias[: scheme.n_heads * hd], bias[scheme.n_heads * hd :][: scheme.n_kv_heads * hd]
        pos_q, pos_k = table @ wq.t() + bq, table @ wk.t() + bk
    else:
        pos_q = scheme.pos_query_proj[layer](table.float()).double()
        pos_k = scheme.pos_key_proj[layer](table.float()).double()
    pos_q = pos_q.unflatten(-1, (scheme.n_heads, -1))
    pos_k = pos_k.unflatten(-1, (scheme.n_kv_heads, -1))
    batch, q_len, heads, _ = q.shape
    k_len, group, span = k.shape[1], heads // k.shape[2], scheme.span
    out = torch.zeros(batch, heads, q_len, k_len, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                for j in range(k_len):
                    delta = _bucket(q_offset + i - j, scheme.position_buckets,
                                    scheme.max_relative_positions)
                    row = min(max(delta + span, 0), 2 * span - 1)
                    c2p = q[b, i, h].double() @ pos_k[row, h // group]
                    p2c = k[b, j, h // group].double() @ pos_q[row, h]
                    out[b, h, i, j] = ("c2p" in scheme.terms) * c2p + ("p2c" in scheme.terms) * p2c
    return out * attention.scale


CASES = {
    "both-terms-gqa": {"n_kv_heads": 2},
    "c2p-only": {"terms": ("c2p",)},
    "p2c-only-norm": {"terms": ("p2c",), "norm_eps": 1e-5},
    "no-buckets": {"position_buckets": 0, "max_relative_positions": 5},
    "separate-projections": {"share_att_key": False, "n_kv_heads": 2},
    "unfused-attention": {"n_kv_heads": 2, "fused_qkv": False},
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_score_term_is_the_formula(case, gen):
    options = {"position_buckets": 6, "max_relative_positions": 9, "n_kv_heads": 4, **CASES[case]}
    kv, fused = options.pop("n_kv_heads"), options.pop("fused_qkv", True)
    scheme = DisentangledPositions(24, 4, kv, 6, n_layers=2, **options).eval()
    with torch.no_grad():
        scheme.rel_embeddings.weight.normal_(generator=gen)
    attention = Attention(24, 4, kv, 6, EagerKernel(), scale=(6 * 3) ** -0.5, fused_qkv=fused)
    q = torch.randn(2, 5, 4, 6, generator=gen)
    k = torch.randn(2, 14, kv, 6, generator=gen)
    with torch.no_grad():
        for layer, offset in ((0, 9), (1, 0)):  # a cache offset, and queries at the start
            got = scheme.score_bias(q, k, attention, layer=layer, q_offset=offset)
            want = _reference(scheme, q, k, attention, layer, offset)
            assert (got.double() - want).abs().max() < 1e-5


def test_relative_index_spans_the_table():
    index = relative_index(3, 40, 30, 8, buckets=8, max_position=20, device=torch.device("cpu"))
    assert index.shape == (3, 40) and index.min() >= 0 and index.max() == 15  # far back: clamped
    assert (index[:, 30:34] == torch.tensor([[8, 7, 6, 5], [9, 8, 7, 6], [10, 9, 8, 7]])).all()


def test_the_scheme_passes_the_conformance_check(gen):
    for options in ({}, {"terms": ("c2p",), "share_att_key": False, "norm_eps": 1e-7}):
        scheme = DisentangledPositions(32, 4, 2, 8, position_buckets=8, max_relative_positions=20,
                                       n_layers=2, **options)  # fmt: skip
        report = check_positional_scheme(scheme, head_dim=8, n_heads=4, n_kv_heads=2, d_model=32,
                                         n_layers=2)  # fmt: skip
        assert sum(line.startswith("score_bias") for line in report.ran) == 2, str(report)


def test_the_registered_component_passes_check_component():
    registry = load_registry(autoload=False, plugins=[plugin])
    report = check_component(registry, "position", "disentangled", position_buckets=8,
                             max_relative_positions=16, norm_eps=1e-7)  # fmt: skip
    assert any("relative" in line for line in report.ran if line.startswith("score_bias"))
    dims = ModelDims(d_model=48, n_heads=6, n_kv_heads=6, head_dim=8, max_seq_len=32, n_layers=3)
    report = check_component(registry, "position", "disentangled", dims=dims, share_att_key=False)
    assert sum(line.startswith("score_bias") for line in report.ran) == 3
