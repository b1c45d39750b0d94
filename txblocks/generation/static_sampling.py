"""Choosing tokens on the device, with no host sync: the end of a compiled decoding step.

The same choices as :func:`~txblocks.generation.config.process_logits` and
``decode._choose`` (repetition penalty, minimum length, greedy or temperature / top-k /
top-p sampling), with what varies kept in tensors of fixed shape: the tokens seen as a
(B, V) flag table instead of a growing (B, t) list, the step count as a tensor. Sampling
is the exponential race (argmax of p / E with E ~ Exp(1), the same distribution as
``torch.multinomial``); the noise E is drawn outside the compiled step from the request's
generator, so a seed reproduces a run (though not eager decoding's draws).

Shapes: B batch, L cache slots, V vocabulary, E end-of-sequence ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from txblocks.generation.config import GenerationConfig, sample_filter


@dataclass(frozen=True)
class Sampling:
    """The settings a compiled step is specialised on (a new combination compiles anew).

    The names are :class:`GenerationConfig`'s, so :func:`sample_filter` reads it as one.
    """

    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    repetition_penalty: float
    min_new_tokens: int
    eos: tuple[int, ...]
    pad: int

    @classmethod
    def of(cls, config: GenerationConfig) -> Sampling:
        sample = config.do_sample
        return cls(sample, config.temperature if sample else 1.0, config.top_k if sample else None,
                   config.top_p if sample else None, config.repetition_penalty,
                   config.min_new_tokens if config.eos_token_id else 0,
                   tuple(config.eos_token_id), config.pad_token_id)


@dataclass
class DecodeState:
    """Everything a step reads and updates in place, on the model's device.

    Attributes:
        tokens: (B, L) long, the prompt then each chosen token at its slot.
        index: (1,) long, the slot of the latest token (the cache's index: shared).
        position: (B, 1) long, the position id of the token at slot ``index`` (left padding
            excluded).
        step: (1,) long, new tokens chosen so far.
        done: (B,) bool, rows that produced an end-of-sequence id.
        end: (B,) long, new tokens of each row up to its end-of-sequence id (else the max).
        eos_ids: (E,) long, or None without end-of-sequence ids.
        eos_vocab: (V,) bool flags of the end-of-sequence ids (min_new_tokens), or None.
        seen: (B, V) bool, tokens in each row so far (repetition penalty), or None.
        noise: (B, V) float32 Exp(1) draws for the next choice (sampling), or None.
    """

    tokens: Tensor
    index: Tensor
    position: Tensor
    step: Tensor
    done: Tensor
    end: Tensor
    eos_ids: Tensor | None = None
    eos_vocab: Tensor | None = None
    seen: Tensor | None = None
    noise: Tensor | None = None


def pick(logits: Tensor, state: DecodeState, sampling: Sampling) -> None:
    """Choose each row's next token from ``logits`` (B, V) and write it at slot ``index``.

    Finished rows get ``pad``; a row that picks an end-of-sequence id is done.
    """
    scores = logits.float()
    if state.seen is not None:  # CTRL's penalty, on every token seen (prompt included)
        p = sampling.repetition_penalty
        scores = torch.where(state.seen, torch.where(scores < 0, scores * p, scores / p), scores)
    if state.eos_vocab is not None and sampling.min_new_tokens:
        scores = scores.masked_fill(state.eos_vocab & (state.step < sampling.min_new_tokens)[:, None],
                                    float("-inf"))
    if sampling.do_sample and state.noise is not None:
        probs = sample_filter(scores, sampling).softmax(-1)  # type: ignore[arg-type]
        token = (probs / state.noise).argmax(-1)
    else:
        token = scores.argmax(-1)  # (B,)
    token = torch.where(state.done, sampling.pad, token)
    state.tokens.index_copy_(1, state.index, token[:, None])
    if state.eos_ids is not None:
        hit = torch.isin(token, state.eos_ids)
        state.end.copy_(torch.where(hit & ~state.done, state.step + 1, state.end))
        state.done.logical_or_(hit)
    if state.seen is not None:
        state.seen.scatter_(1, token[:, None], True)
    state.step.add_(1)
