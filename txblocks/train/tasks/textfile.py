"""A user's own text: byte-level next-token prediction on a plain text file (decoders)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from txblocks.nn.model import ModelOutput
from txblocks.spec.models import ModelSpec
from txblocks.tokenizer import ByteTokenizer
from txblocks.train.tasks.base import Batch, Example, LabelledTask, TrainError, check_text


class TextFileTask(LabelledTask):
    """Decoder language modelling on the UTF-8 bytes of a file (token id = byte value).

    Each example is a window of ``block_size + 1`` bytes at a random offset: the model
    reads the first ``block_size`` and predicts each next byte. The accuracy is the
    fraction of next bytes predicted right. The spec needs ``vocab_size >= 256``.

    Args:
        path: a text file (any bytes, really) of at least 2 bytes.
        block_size: bytes per example; shortened to the file's length minus one.
    """

    name = "text"
    archs = ("decoder",)
    description = "decoder: next-byte prediction on a text file (--data FILE)"

    def __init__(self, path: str | Path, block_size: int = 128) -> None:
        path = Path(path)
        if not path.is_file():
            raise TrainError(f"data file not found: {path}")
        data = path.read_bytes()
        if len(data) < 2:
            raise TrainError(f"data file {path} has {len(data)} bytes; it needs at least 2")
        self.path = path
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        self.block_size = min(block_size, len(data) - 1)

    def check(self, spec: ModelSpec) -> list[str]:
        return check_text(spec, self.name, length=self.block_size, vocab=256)

    def _windows(self, size: int, length: int, generator: torch.Generator) -> Tensor:
        starts = torch.randint(0, len(self.data) - length + 1, (size,), generator=generator)
        return self.data[starts[:, None] + torch.arange(length)]  # (B, length)

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        window = self._windows(size, self.block_size + 1, generator)
        return Batch({"input_ids": window[:, :-1]}, window[:, 1:])

    def accuracy(self, output: ModelOutput, batch: Batch) -> Tensor:
        return (self._logits(output).argmax(-1) == batch.targets).float().mean()

    @torch.no_grad()
    def examples(self, model: nn.Module, n: int, generator: torch.Generator) -> list[Example]:
        half = max(1, min(32, self.block_size // 2))
        window = self._windows(n, min(2 * half, len(self.data)), generator)
        prompt, truth = window[:, :half], window[:, half:]
        device = next(model.parameters()).device
        out = model.generate(prompt.to(device), max_new_tokens=max(truth.shape[1], 1))
        text = ByteTokenizer()

        def show(ids: Tensor) -> str:
            return repr(text.decode(ids.tolist()))[1:-1]

        return [Example(show(p), show(g), show(t))
                for p, g, t in zip(prompt, out[:, half:half + truth.shape[1]].cpu(), truth,
                                   strict=True)]
