"""``reverse``: an encoder–decoder reads a word and writes it backwards."""

from __future__ import annotations

import torch
from torch import nn

from txblocks.spec.models import ModelSpec
from txblocks.train.tasks.base import (
    IGNORE,
    NEWLINE,
    Batch,
    Example,
    LabelledTask,
    ascii_ids,
    check_text,
    decode_answers,
    pad_right,
)
from txblocks.train.tasks.copying import random_words

START = 0  #: the decoder's start token (generation's default ``decoder_start_token_id``)


class ReverseTask(LabelledTask):
    """Seq2seq: source ``word``, target ``word`` reversed then a newline.

    The decoder reads the start token (0) and the target shifted right; the loss counts
    every target token, the accuracy is the exact match of the whole target.

    Args:
        min_length, max_length: the shortest and longest word.
    """

    name = "reverse"
    archs = ("seq2seq",)
    description = "seq2seq: a word -> the word reversed; exact-match of greedy answers"

    def __init__(self, min_length: int = 1, max_length: int = 8) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        self.lengths = (min_length, max_length)

    def check(self, spec: ModelSpec) -> list[str]:
        return check_text(spec, self.name, length=self.lengths[1] + 1)

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        words = random_words(size, self.lengths, generator)
        sources = [ascii_ids(w) for w in words]
        targets = [ascii_ids(w[::-1]) + [NEWLINE] for w in words]
        ids = pad_right(sources)
        mask = pad_right([[1] * len(s) for s in sources])
        decoder_ids = pad_right([[START] + t[:-1] for t in targets])
        return Batch({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids},
                     pad_right(targets, IGNORE))

    @torch.no_grad()
    def examples(self, model: nn.Module, n: int, generator: torch.Generator) -> list[Example]:
        words = random_words(n, self.lengths, generator)
        ids = pad_right([ascii_ids(w) for w in words])
        mask = pad_right([[1] * len(w) for w in words])
        device = next(model.parameters()).device
        out = model.generate(ids.to(device), mask.to(device), max_new_tokens=self.lengths[1] + 1,
                             eos_token_id=NEWLINE, pad_token_id=NEWLINE,
                             decoder_start_token_id=START)
        answers = decode_answers(out[:, 1:].cpu())
        return [Example(w, got, w[::-1]) for w, got in zip(words, answers, strict=True)]
