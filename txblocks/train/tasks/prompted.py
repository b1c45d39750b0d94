"""Decoder tasks written as text, ``prompt`` then ``answer`` then a newline.

The loss counts the answer (and its newline) only; accuracy is the exact match of the
whole answer, which under teacher forcing equals greedy decoding's exact match.
"""

from __future__ import annotations

from typing import ClassVar

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
    pad_left,
    pad_right,
)


class PromptedTask(LabelledTask):
    """A decoder task of ``(prompt, answer)`` text pairs; subclasses say how to draw them."""

    archs: ClassVar[tuple[str, ...]] = ("decoder",)

    def pairs(self, size: int, generator: torch.Generator) -> list[tuple[str, str]]:
        """``size`` (prompt, answer) pairs, the answer without its newline."""
        raise NotImplementedError

    @property
    def longest(self) -> int:
        """The longest prompt + answer + newline, in tokens."""
        raise NotImplementedError

    def check(self, spec: ModelSpec) -> list[str]:
        return check_text(spec, self.name, length=self.longest)

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        rows, targets = [], []
        for prompt, answer in self.pairs(size, generator):
            p, a = ascii_ids(prompt), ascii_ids(answer) + [NEWLINE]
            seq = p + a
            rows.append(seq[:-1])  # the model reads all but the last token ...
            targets.append([IGNORE] * (len(p) - 1) + a)  # ... and predicts the answer
        ids = pad_right(rows)  # right padding: under a causal mask no real token sees it
        return Batch({"input_ids": ids}, pad_right(targets, IGNORE))

    @torch.no_grad()
    def examples(self, model: nn.Module, n: int, generator: torch.Generator) -> list[Example]:
        pairs = self.pairs(n, generator)
        prompts = [ascii_ids(p) for p, _ in pairs]
        ids, mask = pad_left(prompts)
        device = next(model.parameters()).device
        longest = max(len(a) for _, a in pairs) + 1
        out = model.generate(ids.to(device), mask.to(device), max_new_tokens=longest,
                             eos_token_id=NEWLINE, pad_token_id=NEWLINE)
        answers = decode_answers(out[:, ids.shape[1]:].cpu())
        return [Example(p, got, a) for (p, a), got in zip(pairs, answers, strict=True)]
