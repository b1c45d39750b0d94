"""What ``txblocks summary`` reports: per-layer table, parameters, FLOPs, memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from txblocks.build import build
from txblocks.errors import BuildError
from txblocks.quantize import stored_bytes
from txblocks.nn.model import Seq2SeqModel
from txblocks.spec.models import ModelSpec, Seq2SeqSpec, VitSpec

__all__ = ["LayerRow", "ModelSummary", "summarize"]


@dataclass(frozen=True)
class LayerRow:
    stack: str
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


def _count(module: torch.nn.Module, seen: set[int]) -> int:
    """Parameters of ``module`` not counted yet (layers that share a block count it once)."""
    fresh = [p for p in module.parameters() if id(p) not in seen]
    seen.update(id(p) for p in fresh)
    return sum(p.numel() for p in fresh)


def _describe(config: object) -> str:
    data = config.model_dump(exclude_defaults=True)  # type: ignore[attr-defined]
    name = data.pop("type")
    extra = ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict))
    return f"{name}({extra})" if extra else name


def _stacks(model: torch.nn.Module) -> dict[str, torch.nn.ModuleList]:
    if isinstance(model, Seq2SeqModel):
        return {"encoder": model.encoder.blocks, "decoder": model.decoder.blocks}
    return {"": model.blocks}  # type: ignore[dict-item]


def _example_input(spec: ModelSpec, seq_len: int) -> dict[str, torch.Tensor]:
    if isinstance(spec, VitSpec):
        return {"pixel_values": torch.randn(1, spec.channels, *spec.image_hw)}
    ids = torch.randint(0, spec.vocab, (1, seq_len))
    mels = getattr(getattr(spec, "front_end", None), "mels", None)
    if isinstance(spec, Seq2SeqSpec) and mels is not None:  # audio: frames become T / 2
        return {"input_features": torch.randn(1, mels, 2 * seq_len), "decoder_input_ids": ids}
    if isinstance(spec, Seq2SeqSpec):
        return {"input_ids": ids, "decoder_input_ids": ids}
    return {"input_ids": ids}


def summarize(spec: ModelSpec, *, seq_len: int = 128, model: torch.nn.Module | None = None,
              device: torch.device | str | None = None) -> ModelSummary:
    """Build ``spec`` (unless ``model`` is given) and measure one batch-1 forward of ``seq_len``
    tokens (both stacks of a seq2seq model; one image of ``image_size`` for a ViT).

    With ``device``, each layer's kernel column says which kernel would run it there
    (``auto → xformers``), as :func:`txblocks.doctor.layer_kernels` finds.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products
    and attention; elementwise work is not counted).

    Raises:
        BuildError: the model, or its measured forward, does not fit in memory (with the
            numbers), or it cannot be built here.
    """
    model = model if model is not None else build(spec)
    seq_len = min(seq_len, spec.max_seq_len)
    if isinstance(spec, VitSpec):
        (h, w), (ph, pw) = spec.image_hw, spec.patch_hw
        seq_len = (h // ph) * (w // pw) + int(spec.class_token) + spec.register_tokens
    chosen: dict[str, str] = {}
    if device is not None:
        from txblocks.doctor import layer_kernels

        chosen = layer_kernels(spec, torch.device(device), seq_len=seq_len)
    rows = []
    seen: set[int] = set()  # a block shared by several layers (share_layers) counts once
    for stack, blocks in _stacks(model).items():
        for i, block in enumerate(blocks):
            bspec = spec.block_for(i, stack or None)  # type: ignore[arg-type]
            rows.append(
                LayerRow(
                    stack, i, bspec.layout,
                    chosen.get(f"{stack} {i}".strip(), bspec.attention.kernel.type),
                    _describe(bspec.attention.mask), _describe(bspec.ffn), _count(block, seen),
                )
            )
    counter = FlopCounterMode(display=False)
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(**_example_input(spec, seq_len))
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        reason = str(exc).splitlines()[0]
        raise BuildError(f"spec {spec.name!r}: no memory for the measured forward of {seq_len} "
                         f"tokens ({reason}); measure fewer tokens") from None
    unique = {id(p): p for p in model.parameters()}.values()
    return ModelSummary(
        name=spec.name,
        arch=spec.arch,
        layers=rows,
        parameters=sum(p.numel() for p in unique),
        parameter_bytes=sum(stored_bytes(p) for p in unique),
        seq_len=seq_len,
        forward_flops=counter.get_total_flops(),
    )
