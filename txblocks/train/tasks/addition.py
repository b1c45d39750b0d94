"""``addition``: multi-digit addition written as text, e.g. ``47+38=85`` or ``123+45=168``."""

from __future__ import annotations

import torch

from txblocks.train.tasks.prompted import PromptedTask


def operands(size: int, digits: int, generator: torch.Generator) -> torch.Tensor:
    """(size,) numbers of 1 to ``digits`` digits: the digit count is uniform, then the value."""
    n = torch.randint(1, digits + 1, (size,), generator=generator)
    low = torch.where(n == 1, 0, 10 ** (n - 1))
    high = 10**n
    return low + (torch.rand(size, generator=generator, dtype=torch.float64)
                  * (high - low)).long().clamp_max(high - low - 1)


class AdditionTask(PromptedTask):
    """Decoder: prompt ``a+b=``, answer ``a+b`` in decimal; loss on the answer tokens only.

    Args:
        digits: the most digits of each operand (each operand draws its digit count
            uniformly from 1 to ``digits``).
    """

    name = "addition"
    description = "decoder: 'a+b=' -> the sum, e.g. 47+38=85; exact-match of greedy answers"

    def __init__(self, digits: int = 2) -> None:
        if not 1 <= digits <= 15:  # exact in float64, which draws the values
            raise ValueError(f"digits must be between 1 and 15, got {digits}")
        self.digits = digits

    @property
    def longest(self) -> int:
        return 3 * self.digits + 3  # the model reads "a+b=sum" and predicts the newline

    def pairs(self, size: int, generator: torch.Generator) -> list[tuple[str, str]]:
        a = operands(size, self.digits, generator).tolist()
        b = operands(size, self.digits, generator).tolist()
        return [(f"{x}+{y}=", str(x + y)) for x, y in zip(a, b, strict=True)]
