"""``copy``: repeat a random string of letters after ``>``, e.g. ``qxkf>qxkf``."""

from __future__ import annotations

import torch

from txblocks.train.tasks.prompted import PromptedTask

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def random_words(size: int, lengths: tuple[int, int], generator: torch.Generator,
                 alphabet: str = LETTERS) -> list[str]:
    """``size`` strings of letters with lengths uniform in ``lengths`` (inclusive)."""
    n = torch.randint(lengths[0], lengths[1] + 1, (size,), generator=generator).tolist()
    letters = torch.randint(0, len(alphabet), (size, lengths[1]), generator=generator).tolist()
    return ["".join(alphabet[i] for i in row[:k]) for row, k in zip(letters, n, strict=True)]


class CopyTask(PromptedTask):
    """Decoder: prompt ``word>``, answer ``word``; loss on the copy only.

    Args:
        min_length, max_length: the shortest and longest word.
    """

    name = "copy"
    description = "decoder: 'word>' -> the same word; exact-match of greedy answers"

    def __init__(self, min_length: int = 1, max_length: int = 8) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        self.lengths = (min_length, max_length)

    @property
    def longest(self) -> int:
        return 2 * self.lengths[1] + 2  # word > word \n

    def pairs(self, size: int, generator: torch.Generator) -> list[tuple[str, str]]:
        return [(f"{w}>", w) for w in random_words(size, self.lengths, generator)]
