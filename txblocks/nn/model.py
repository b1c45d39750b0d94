"""Encoder and decoder stacks: embeddings, blocks, final norm, head.

Shapes: B batch, T time, C d_model, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from txblocks.attention.mask import AttentionMask
from txblocks.attention.strategies import MaskStrategy
from txblocks.nn.block import TransformerBlock, sum_aux
from txblocks.nn.embeddings import Embeddings
from txblocks.nn.positional import PositionalScheme


@dataclass
class ModelOutput:
    """What a forward returns.

    Attributes:
        last_hidden_state: (B, T, C) after the final norm.
        logits: the head's output ((B, T, V) for language models), or None without a head.
        aux_loss: the sum of auxiliary losses (MoE load balancing), or None.
    """

    last_hidden_state: Tensor
    logits: Tensor | None = None
    aux_loss: Tensor | None = None


class TransformerModel(nn.Module):
    """A stack of Transformer blocks between embeddings and a head.

    Args:
        embeddings: token (and segment) embeddings.
        position: the positional scheme, shared by every block.
        blocks: the blocks, in order.
        masks: one mask strategy per block (layers may differ: local/global stacks).
        final_norm: a norm after the last block, or None.
        head: the output head, or None.
    """

    def __init__(self, embeddings: Embeddings, position: PositionalScheme,
                 blocks: list[TransformerBlock], masks: list[MaskStrategy],
                 final_norm: nn.Module | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        if len(masks) != len(blocks):
            raise ValueError(f"got {len(masks)} mask strategies for {len(blocks)} blocks")
        self.embeddings = embeddings
        self.position = position
        self.blocks = nn.ModuleList(blocks)
        self.masks = list(masks)
        self.final_norm = final_norm
        self.head = head
        self.spec: Any = None  # the spec it was built from, set by txblocks.build

    def attention_masks(self, batch: int, length: int, *, device: torch.device, dtype: torch.dtype,
                        attention_mask: Tensor | None = None, **mask_inputs: Any) -> list[AttentionMask]:
        """One mask object per block; blocks that share a strategy share the object."""
        key_padding = attention_mask.bool() if attention_mask is not None else None
        built: dict[int, AttentionMask] = {}
        out = []
        for strategy in self.masks:
            if id(strategy) not in built:
                mask = strategy(length, length, key_padding=key_padding, **mask_inputs)
                bias = self.position.attention_bias(length, length, 0, strategy.causal, device, dtype)
                built[id(strategy)] = mask.with_bias(bias) if bias is not None else mask
            out.append(built[id(strategy)])
        return out

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_lens: list[list[int]] | None = None,
        prefix_lengths: Tensor | None = None,
    ) -> ModelOutput:
        """Run the stack.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 for real tokens and 0 for padding.
            token_type_ids: (B, T) segment ids, for models with token types.
            position_ids: (B, T) positions; default 0..T-1.
            seq_lens: per row, the lengths of packed sequences (``block_diagonal`` masks).
            prefix_lengths: (B,) bidirectional prefix lengths (``prefix_lm`` masks).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, "
                f"input_ids {tuple(input_ids.shape)}: they must match"
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device)[None]
        x = self.embeddings(input_ids, self.position.embed(position_ids), token_type_ids)
        rotary = self.position.rotary(position_ids)

        def rotate(t: Tensor) -> Tensor:
            return self.position.rotate(t, rotary)

        mask_inputs: dict[str, Any] = {}
        if seq_lens is not None:
            mask_inputs["seq_lens"] = seq_lens
        if prefix_lengths is not None:
            mask_inputs["prefix_lengths"] = prefix_lengths
        masks = self.attention_masks(batch, length, device=x.device, dtype=x.dtype,
                                     attention_mask=attention_mask, **mask_inputs)
        aux_losses = []
        for block, mask in zip(self.blocks, masks, strict=True):
            x, aux = block(x, mask, rotate if rotary is not None else None)
            aux_losses.append(aux)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.head(x, attention_mask) if self.head is not None else None
        return ModelOutput(last_hidden_state=x, logits=logits, aux_loss=sum_aux(aux_losses, x))
