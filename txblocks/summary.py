"""What ``txblocks summary`` reports: per-layer table, parameters, FLOPs, memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from txblocks.build import build
from txblocks.nn.model import TransformerModel
from txblocks.spec.models import ModelSpec

__all__ = ["LayerRow", "ModelSummary", "summarize"]


@dataclass(frozen=True)
class LayerRow:
    index: int
    layout: str
    kernel: str
    mask: str
    ffn: str
    parameters: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    arch: str
    layers: list[LayerRow]
    parameters: int
    parameter_bytes: int
    seq_len: int
    forward_flops: int


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _describe(config: object) -> str:
    data = config.model_dump(exclude_defaults=True)  # type: ignore[attr-defined]
    name = data.pop("type")
    extra = ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict))
    return f"{name}({extra})" if extra else name


def summarize(spec: ModelSpec, *, seq_len: int = 128, model: TransformerModel | None = None) -> ModelSummary:
    """Build ``spec`` (unless ``model`` is given) and measure one batch-1 forward of ``seq_len``.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products
    and attention; elementwise work is not counted).
    """
    model = model if model is not None else build(spec)
    seq_len = min(seq_len, spec.max_seq_len)
    rows = []
    for i, block in enumerate(model.blocks):
        bspec = spec.block_for(i)
        rows.append(
            LayerRow(
                i, bspec.layout, bspec.attention.kernel.type, _describe(bspec.attention.mask),
                _describe(bspec.ffn), _count(block),
            )
        )
    ids = torch.randint(0, spec.vocab_size, (1, seq_len))
    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), counter:
        model(ids)
    unique = {id(p): p for p in model.parameters()}.values()
    return ModelSummary(
        name=spec.name,
        arch=spec.arch,
        layers=rows,
        parameters=sum(p.numel() for p in unique),
        parameter_bytes=sum(p.numel() * p.element_size() for p in unique),
        seq_len=seq_len,
        forward_flops=counter.get_total_flops(),
    )
