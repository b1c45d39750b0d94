"""Incremental decoding sessions: one per model family, the same interface for every loop."""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.nn.model import Seq2SeqModel, TransformerModel


def _left_padded(mask: Tensor) -> None:
    mask = mask.long()
    if (mask[:, 1:] < mask[:, :-1]).any() or (mask[:, -1] == 0).any():
        raise ValueError(
            "batched generation needs left padding: each row's attention_mask must be "
            "0…0 1…1 (pad on the left), ending with a real token"
        )


class DecoderSession:
    """Prefill a decoder-only model with the prompt, then feed one token per row per step.

    Positions follow the attention mask, so left-padded rows start at position 0.
    """

    def __init__(self, model: TransformerModel, input_ids: Tensor, attention_mask: Tensor | None,
                 max_new_tokens: int, expand: int = 1) -> None:
        if model.head is None:
            raise ValueError("generation needs a model with an lm head")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _left_padded(attention_mask)
        if expand > 1:
            input_ids = input_ids.repeat_interleave(expand, 0)
            attention_mask = attention_mask.repeat_interleave(expand, 0)
        self.model, self.input_ids = model, input_ids
        self.cache = model.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        self.positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        # Without padding, the masks need no key-padding part (one host check, here): decoding
        # steps then attend to every cached key with no mask tensor at all.
        self.mask = attention_mask if not bool(attention_mask.all()) else None

    @property
    def prompt(self) -> Tensor:
        return self.input_ids

    def prefill(self) -> Tensor:
        out = self.model(self.input_ids, self.mask, position_ids=self.positions, cache=self.cache,
                         logits_to_keep=1)
        self.next_position = self.positions[:, -1:] + 1
        # The prompt was checked by this forward; steps feed back the model's own choices.
        self.cache.skip_input_checks = True
        return out.logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        ones = torch.ones_like(tokens)[:, None] if self.mask is not None else None
        out = self.model(tokens[:, None], ones, position_ids=self.next_position, cache=self.cache)
        self.next_position = self.next_position + 1
        return out.logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        self.cache.reorder(index)
        self.next_position = self.next_position.index_select(0, index)


class Seq2SeqSession:
    """Encode the source once, then decode from the start token with cached cross-attention."""

    def __init__(self, model: Seq2SeqModel, input_ids: Tensor, attention_mask: Tensor | None,
                 max_new_tokens: int, start_token: int, expand: int = 1) -> None:
        if model.head is None:
            raise ValueError("generation needs a model with an lm head")
        if expand > 1:
            input_ids = input_ids.repeat_interleave(expand, 0)
            attention_mask = attention_mask.repeat_interleave(expand, 0) if attention_mask is not None else None
        self.model, self.source_mask = model, attention_mask
        self.encoded = model.encode(input_ids, attention_mask)
        self.cache = model.decoder.new_cache(input_ids.shape[0], max_new_tokens + 1)
        self.input_ids = torch.full((input_ids.shape[0], 1), start_token, device=input_ids.device)

    @property
    def prompt(self) -> Tensor:
        return self.input_ids

    def prefill(self) -> Tensor:
        logits = self.step(self.input_ids[:, 0])
        self.cache.skip_input_checks = True  # the start token was checked by that forward
        return logits

    def step(self, tokens: Tensor) -> Tensor:
        out = self.model(attention_mask=self.source_mask, decoder_input_ids=tokens[:, None],
                         encoder_outputs=self.encoded, cache=self.cache)
        return out.logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        self.cache.reorder(index)
        self.encoded = self.encoded.index_select(0, index)
        if self.source_mask is not None:
            self.source_mask = self.source_mask.index_select(0, index)
