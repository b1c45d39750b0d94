"""``sorted``: is a sequence of digits in non-decreasing order? (encoder, two classes)."""

from __future__ import annotations

import torch
from torch import nn

from txblocks.spec.models import ModelSpec
from txblocks.train.tasks.base import (
    Batch,
    Example,
    LabelledTask,
    ascii_ids,
    check_classifier,
    check_text,
    pad_right,
)

CLS = "^"  #: the first token of every input, read by ``pooling: cls``
LABELS = ("unsorted", "sorted")


def draw(size: int, lengths: tuple[int, int], generator: torch.Generator) -> list[list[int]]:
    """Digit sequences: a third sorted, a third sorted but for one swap, a third random.

    The labels come from the digits themselves (:func:`is_sorted`), never from the draw.
    """
    n = torch.randint(lengths[0], lengths[1] + 1, (size,), generator=generator).tolist()
    digits = torch.randint(0, 10, (size, lengths[1]), generator=generator)
    kind = torch.randint(0, 3, (size,), generator=generator).tolist()
    swap = torch.randint(0, lengths[1] - 1, (size,), generator=generator).tolist()
    out = []
    for row, k, how, j in zip(digits.tolist(), n, kind, swap, strict=True):
        seq = row[:k]
        if how < 2:
            seq.sort()
        if how == 1:
            j = j % (k - 1)
            seq[j], seq[j + 1] = seq[j + 1], seq[j]
        out.append(seq)
    return out


def is_sorted(seq: list[int]) -> bool:
    return all(a <= b for a, b in zip(seq, seq[1:]))


class SortedTask(LabelledTask):
    """Encoder classification: ``^`` then 2 to 10 digits; class 1 when they are sorted.

    Needs ``head: {type: classifier, n_classes: 2}`` (any pooling: the ``^`` token is
    there for ``cls``, the attention mask for ``mean`` and ``last``).

    Args:
        min_length, max_length: the fewest and most digits (at least 2).
    """

    name = "sorted"
    archs = ("encoder",)
    description = "encoder: '^' + digits -> sorted or not (classifier head, n_classes 2)"

    def __init__(self, min_length: int = 2, max_length: int = 10) -> None:
        if not 2 <= min_length <= max_length:
            raise ValueError(f"need 2 <= min_length <= max_length, got {min_length}, {max_length}")
        self.lengths = (min_length, max_length)

    def check(self, spec: ModelSpec) -> list[str]:
        problems = check_classifier(spec, self.name, 2)
        text = check_text(spec, self.name, length=self.lengths[1] + 1)
        return problems + [p for p in text if not p.startswith("head")]

    def _encode(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [ascii_ids(CLS + "".join(map(str, s))) for s in seqs]
        return pad_right(rows), pad_right([[1] * len(r) for r in rows])

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        seqs = draw(size, self.lengths, generator)
        ids, mask = self._encode(seqs)
        labels = torch.tensor([int(is_sorted(s)) for s in seqs])
        return Batch({"input_ids": ids, "attention_mask": mask}, labels)

    @torch.no_grad()
    def examples(self, model: nn.Module, n: int, generator: torch.Generator) -> list[Example]:
        seqs = draw(n, self.lengths, generator)
        ids, mask = self._encode(seqs)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            logits = model(ids.to(device), attention_mask=mask.to(device)).logits
        finally:
            model.train(was_training)
        guesses = logits.argmax(-1).tolist()
        return [Example("".join(map(str, s)), LABELS[g], LABELS[int(is_sorted(s))])
                for s, g in zip(seqs, guesses, strict=True)]
