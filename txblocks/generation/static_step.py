"""One decoding step of a decoder (or a seq2seq decoder) over a static cache: what
``compile=True`` compiles.

A function over the model's own submodules (embeddings, positional scheme, blocks, final
norm, head; for seq2seq the decoder stack, cross-attending to encoder keys and values
computed once by the prefill), not :meth:`TransformerStack.run`: every shape is fixed by
(B, L), the slot and the positions are tensors, and nothing reads a value back to the host,
so ``torch.compile(fullgraph=True)`` traces it once per (batch, cache length, dtype).

Shapes: B batch, L cache slots, C d_model, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

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
from txblocks.nn.cache import CrossCache, StaticKVCache, StaticLayerCache
from txblocks.nn.model import Seq2SeqModel, TransformerModel, TransformerStack
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


def static_step_problems(model: TransformerStack) -> list[str]:
    """What keeps the stack ``model`` (a decoder, or a seq2seq model's decoder) from a
    compiled decoding step, each naming the part; empty if none."""
    problems = []
    position = type(model.position)
    if position not in STATIC_POSITIONS:
        allowed = ", ".join(STATIC_POSITIONS.values())
        problems.append(f"positional scheme {position.__name__} (compile=True supports {allowed})")
    for i, (block, strategy) in enumerate(zip(model.blocks, model.masks, strict=True)):
        if not isinstance(strategy, STATIC_MASKS):
            allowed = ", ".join(cls.name for cls in STATIC_MASKS)
            problems.append(f"layer {i}: mask {strategy!r} (compile=True supports {allowed})")
        if isinstance(block.ffn, MoE) and (why := static_moe_problem(block.ffn)):
            problems.append(f"layer {i}: {why}")
        unknown = sorted(set(block._modules) - MIRRORED_PARTS) if isinstance(block.ffn, MoE) else []
        if unknown:
            problems.append(f"layer {i}: an MoE block with {', '.join(unknown)}, which the static "
                            "MoE path (a step-by-step copy of TransformerBlock.forward) does not run")
    return problems


#: The parts of a block that :func:`_block` runs for an MoE block (the names of
#: :class:`TransformerBlock`'s submodules); a block with any other part is refused.
MIRRORED_PARTS = {"attention", "ffn", "norm1", "norm2", "cross_attention", "norm_cross",
                  "post_attention_norm", "post_ffn_norm", "attention_scale", "ffn_scale", "dropout"}


def _post(norm: nn.Module | None, h: Tensor) -> Tensor:
    return h if norm is None else norm(h)


def _block(block: TransformerBlock, x: Tensor, mask: AttentionMask, rotate: Any,
           cache: StaticLayerCache, context: Tensor | None, context_mask: AttentionMask | None,
           cross_cache: CrossCache | None) -> Tensor:
    """``block(x, mask, rotate, context, context_mask, cache=..., cross_cache=...)``, with an
    MoE ffn on its static path (the rest of :meth:`TransformerBlock.forward`, step by step)."""
    if not isinstance(block.ffn, MoE):
        return block(x, mask, rotate, context, context_mask, cache=cache, cross_cache=cross_cache)[0]
    moe, drop = block.ffn, block.dropout
    attention_scale = getattr(block, "attention_scale", None)  # LayerScale (BEiT, CaiT)
    ffn_scale = getattr(block, "ffn_scale", None)

    def attend(h: Tensor) -> Tensor:
        return _post(attention_scale, block.attention(h, mask, rotate, cache=cache))

    def ffn(h: Tensor) -> Tensor:
        return _post(ffn_scale, moe_all_experts(moe, h))

    if block.layout == "parallel":
        h = block.norm1(x)
        out = ffn(h if block.norm2 is None else block.norm2(x))
        return (x + drop(_post(block.post_attention_norm, attend(h)))
                + drop(_post(block.post_ffn_norm, out)))
    steps: list[tuple[nn.Module, Callable[[Tensor], Tensor], nn.Module | None]] = [
        (block.norm1, attend, block.post_attention_norm)]
    if block.cross_attention is not None and block.norm_cross is not None:
        cross = block.cross_attention

        def cross_attend(h: Tensor) -> Tensor:
            return cross(h, context_mask, context=context, cache=cross_cache)  # type: ignore[arg-type]

        steps.append((block.norm_cross, cross_attend, None))
    steps.append((block.norm2, ffn, block.post_ffn_norm))  # type: ignore[arg-type]
    for norm, f, after in steps:
        if block.layout == "pre_norm":
            x = x + drop(_post(after, f(norm(x))))
        elif block.layout == "post_norm":
            x = norm(x + drop(_post(after, f(x))))
        else:  # reordered_norm
            x = x + drop(norm(f(x)))
    return x


def stack_and_head(model: TransformerModel | Seq2SeqModel) -> tuple[TransformerStack, nn.Module]:
    """The stack a decoding step runs (a decoder, or a seq2seq model's decoder) and the head."""
    stack = model.decoder if isinstance(model, Seq2SeqModel) else model
    return stack, model.head  # type: ignore[return-value]


def forward_step(model: TransformerModel | Seq2SeqModel, cache: StaticKVCache, token: Tensor,
                 position: Tensor) -> Tensor:
    """Logits (B, V) of ``token`` (B, 1) at ``position`` (B, 1), its keys and values written at
    slot ``cache.index``; a seq2seq decoder cross-attends to the cached encoder keys."""
    stack, head = stack_and_head(model)
    scheme = stack.position
    x = stack.embeddings(token, scheme.embed(position))  # type: ignore[misc]  # (B, 1, C)
    rotary = scheme.rotary(position)

    def rotate(t: Tensor) -> Tensor:
        return scheme.rotate(t, rotary)

    masks = step_masks(stack, cache, x.dtype)
    context_mask = None
    if cache.context is not None:  # as TransformerStack.run builds it
        context_mask = stack._cross(1, cache.context.shape[1], key_padding=cache.context_valid,
                                    q_offset=0)
    crosses = iter(cache.cross)
    for block, mask, layer in zip(stack.blocks, masks, cache.layers, strict=True):
        cross = next(crosses) if block.cross_attention is not None else None
        x = _block(block, x, mask, rotate if rotary is not None else None, layer,
                   cache.context, context_mask, cross)
    if stack.final_norm is not None:
        x = stack.final_norm(x)
    if stack.project_out is not None:
        x = stack.project_out(x)
    return head(x, None)[:, -1]


def decode_step(model: TransformerModel | Seq2SeqModel, cache: StaticKVCache, state: DecodeState,
                sampling: Sampling) -> None:
    """Feed the latest token, choose the next one: every tensor of ``cache`` and ``state``
    is updated in place (the slot and position advance by one)."""
    token = state.tokens.index_select(1, state.index)  # (B, 1)
    logits = forward_step(model, cache, token, state.position)
    state.index.add_(1)
    state.position.add_(1)
    pick(logits, state, sampling)
