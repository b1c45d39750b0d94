"""One decoding step of a decoder model over a static cache: what ``compile=True`` compiles.

A function over the model's own submodules (embeddings, positional scheme, blocks, final
norm, head), not :meth:`TransformerStack.run`: every shape is fixed by (B, L), the slot and
the positions are tensors, and nothing reads a value back to the host, so
``torch.compile(fullgraph=True)`` traces it once per (batch, cache length, dtype).

Shapes: B batch, L cache slots, C d_model, V vocabulary.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from txblocks.attention.mask import AttentionMask
from txblocks.attention.strategies import (
    BlockDiagonalStrategy,
    CausalStrategy,
    FullStrategy,
    PrefixLMStrategy,
    SlidingWindowStrategy,
)
from txblocks.generation.static_mask import step_masks
from txblocks.generation.static_moe import moe_all_experts, static_moe_problem
from txblocks.generation.static_sampling import DecodeState, Sampling, pick
from txblocks.nn.block import TransformerBlock
from txblocks.nn.cache import StaticKVCache, StaticLayerCache
from txblocks.nn.model import TransformerModel
from txblocks.nn.moe import MoE
from txblocks.nn.positional import PositionalScheme
from txblocks.nn.positions import (
    ALiBi,
    LearnedPositions,
    RelativePositionBias,
    RotaryPositions,
    SinusoidalPositions,
)

#: Positional schemes whose hooks take a position tensor (and a tensor query offset).
STATIC_POSITIONS = {PositionalScheme: "none", SinusoidalPositions: "sinusoidal",
                    LearnedPositions: "learned", RotaryPositions: "rope", ALiBi: "alibi",
                    RelativePositionBias: "relative_bias"}
#: Mask strategies that a decoding step reduces to "earlier slots (within the window)".
STATIC_MASKS = (CausalStrategy, SlidingWindowStrategy, FullStrategy, PrefixLMStrategy,
                BlockDiagonalStrategy)


def static_step_problems(model: TransformerModel) -> list[str]:
    """What keeps ``model`` from a compiled decoding step, each naming the part; empty if none."""
    problems = []
    position = type(model.position)
    if position not in STATIC_POSITIONS:
        allowed = ", ".join(STATIC_POSITIONS.values())
        problems.append(f"positional scheme {position.__name__} (compile=True supports {allowed})")
    for i, (block, strategy) in enumerate(zip(model.blocks, model.masks, strict=True)):
        if not isinstance(strategy, STATIC_MASKS):
            allowed = ", ".join(cls.name for cls in STATIC_MASKS)
            problems.append(f"layer {i}: mask {strategy!r} (compile=True supports {allowed})")
        if block.cross_attention is not None:
            problems.append(f"layer {i}: cross-attention (compile=True decodes decoder-only models)")
        if isinstance(block.ffn, MoE) and (why := static_moe_problem(block.ffn)):
            problems.append(f"layer {i}: {why}")
    return problems


def _block(block: TransformerBlock, x: Tensor, mask: AttentionMask, rotate: Any,
           cache: StaticLayerCache) -> Tensor:
    """``block(x, mask, rotate, cache=cache)``, with an MoE ffn on its static path."""
    if not isinstance(block.ffn, MoE):
        return block(x, mask, rotate, cache=cache)[0]
    moe, drop = block.ffn, block.dropout

    def attend(h: Tensor) -> Tensor:
        return block.attention(h, mask, rotate, cache=cache)

    def ffn(h: Tensor) -> Tensor:
        return moe_all_experts(moe, h)

    if block.layout == "parallel":  # as TransformerBlock.forward
        return x + drop(attend(block.norm1(x))) + drop(ffn(block.norm2(x)))
    for norm, f in ((block.norm1, attend), (block.norm2, ffn)):
        x = x + drop(f(norm(x))) if block.layout == "pre_norm" else norm(x + drop(f(x)))
    return x


def forward_step(model: TransformerModel, cache: StaticKVCache, token: Tensor,
                 position: Tensor) -> Tensor:
    """Logits (B, V) of ``token`` (B, 1) at ``position`` (B, 1), its keys and values written at
    slot ``cache.index``."""
    scheme = model.position
    x = model.embeddings(token, scheme.embed(position))  # type: ignore[misc]  # (B, 1, C)
    rotary = scheme.rotary(position)

    def rotate(t: Tensor) -> Tensor:
        return scheme.rotate(t, rotary)

    masks = step_masks(model, cache, x.dtype)
    for block, mask, layer in zip(model.blocks, masks, cache.layers, strict=True):
        x = _block(block, x, mask, rotate if rotary is not None else None, layer)
    if model.final_norm is not None:
        x = model.final_norm(x)
    return model.head(x, None)[:, -1]  # type: ignore[misc]


def decode_step(model: TransformerModel, cache: StaticKVCache, state: DecodeState,
                sampling: Sampling) -> None:
    """Feed the latest token, choose the next one: every tensor of ``cache`` and ``state``
    is updated in place (the slot and position advance by one)."""
    token = state.tokens.index_select(1, state.index)  # (B, 1)
    logits = forward_step(model, cache, token, state.position)
    state.index.add_(1)
    state.position.add_(1)
    pick(logits, state, sampling)
