"""Tokenizers for the CLI: bytes built in, Hugging Face ``tokenizers`` files when installed."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    """What ``txblocks generate`` needs from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids 0–255 (ids ≥ 256 are reserved and decode to nothing)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class TokenizerError(ValueError):
    """A tokenizer file cannot be used; the message names the file."""


class HFTokenizer:
    """A ``tokenizer.json`` read by the ``tokenizers`` package."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:  # pragma: no cover - depends on the environment
            raise TokenizerError(f"reading {path} needs the `tokenizers` package: pip install "
                                 "tokenizers") from None
        path = Path(path)
        if not path.exists():
            raise TokenizerError(f"tokenizer file not found: {path}")
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise TokenizerError(f"{path} is {what}, not a tokenizer.json file")
        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception for any bad file
            raise TokenizerError(f"{path} is not a Hugging Face tokenizer.json: "
                                 f"{str(exc)[:200]}") from None
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))


def tokenizer_for(path: str | Path | None) -> ByteTokenizer | HFTokenizer:
    """The byte tokenizer, or the Hugging Face tokenizer file at ``path``.

    Raises:
        TokenizerError: ``path`` is missing, a folder, or not a tokenizer.json.
    """
    return HFTokenizer(path) if path else ByteTokenizer()
