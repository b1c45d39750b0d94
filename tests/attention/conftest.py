"""Mask cases for the attention tests, parametrized over every registered mask strategy.

A test that takes a ``mask_case`` argument runs once per example below, for every
mask in the registry. A mask registered without examples here gets a failing
case, so a new strategy is tested the day it is registered.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from txblocks.attention.mask import AttentionMask
from txblocks.attention.strategies import MaskStrategy
from txblocks.plugins import load_registry
from txblocks.registry import Registry

#: mask name -> list of (config params, call options). Options: ``packed`` (random
#: ``seq_lens``), ``prefix_per_row`` (random per-row ``prefix_lengths``).
EXAMPLES: dict[str, list[tuple[dict[str, Any], dict[str, bool]]]] = {
    "none": [({}, {}), ({}, {"packed": True})],
    "causal": [({}, {}), ({}, {"packed": True})],
    "sliding_window": [({"window": 1}, {}), ({"window": 3}, {}), ({"window": 2}, {"packed": True})],
    "prefix_lm": [({"length": 0}, {}), ({"length": 3}, {}), ({}, {"prefix_per_row": True})],
    "block_diagonal": [
        ({"causal": True}, {"packed": True}),
        ({"causal": False}, {"packed": True}),
        ({"causal": True}, {}),
    ],
}

#: (Tq, Tk, q_offset): self-attention, KV-cache decoding (bottom-right), queries at 0.
SHAPES = {"square": (6, 6, None), "cache": (3, 7, None), "top_left": (4, 7, 0), "step": (1, 7, None)}
PADDINGS = ("none", "right", "left")


@dataclass(frozen=True)
class MaskCase:
    """One registered strategy with example parameters and call options."""

    name: str
    params: dict[str, Any]
    options: dict[str, bool]

    def __str__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in {**self.params, **self.options}.items())
        return f"{self.name}({args})"


@dataclass
class BuiltMask:
    """A mask built through the registry, with the call arguments that made it."""

    strategy: MaskStrategy
    mask: AttentionMask
    batch: int
    q_len: int
    k_len: int
    q_offset: int
    key_padding: torch.Tensor | None
    seq_lens: list[list[int]] | None
    prefix_lengths: torch.Tensor | None


@functools.cache
def builtin_registry() -> Registry:
    """The built-ins, loaded once for the session (loading scans entry points: slow)."""
    return load_registry(autoload=False)


def _mask_names() -> tuple[str, ...]:
    return tuple(builtin_registry().names("mask"))


def all_mask_cases() -> list[MaskCase]:
    """Every example of every registered mask (failing placeholders for missing ones)."""
    cases = []
    for name in _mask_names():
        for params, options in EXAMPLES.get(name, [({"__missing__": True}, {})]):
            cases.append(MaskCase(name, params, options))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mask_case" in metafunc.fixturenames:
        cases = all_mask_cases()
        metafunc.parametrize("mask_case", cases, ids=[str(c) for c in cases])


def random_padding(kind: str, batch: int, k_len: int, gen: torch.Generator) -> torch.Tensor | None:
    """Bool (B, Tk), True = real token; ``left`` pads at the start of each row."""
    if kind == "none":
        return None
    lengths = torch.randint(1, k_len + 1, (batch,), generator=gen)
    lengths[0] = max(1, k_len - 2)  # at least one row padded
    pos = torch.arange(k_len)
    if kind == "right":
        return pos[None, :] < lengths[:, None]
    return pos[None, :] >= (k_len - lengths)[:, None]


def random_seq_lens(batch: int, total: int, gen: torch.Generator) -> list[list[int]]:
    """Per row, 1 to 3 positive lengths summing to ``total``."""
    rows = []
    for _ in range(batch):
        pieces = int(torch.randint(1, min(3, total) + 1, (1,), generator=gen))
        cuts = sorted(torch.randperm(total - 1, generator=gen)[: pieces - 1].add(1).tolist())
        bounds = [0, *cuts, total]
        rows.append([b - a for a, b in zip(bounds, bounds[1:])])
    return rows


def build_mask(
    case: MaskCase,
    gen: torch.Generator,
    *,
    batch: int = 2,
    shape: str = "square",
    padding: str = "none",
    key_padding: torch.Tensor | None = None,
) -> BuiltMask:
    """Build ``case`` through the registry with random call arguments."""
    if "__missing__" in case.params:
        pytest.fail(f"mask {case.name!r} is registered but has no EXAMPLES in {__file__}")
    q_len, k_len, q_offset = SHAPES[shape]
    entry = builtin_registry().get("mask", case.name)
    strategy = entry.factory(entry.config(**case.params))
    if key_padding is None:
        key_padding = random_padding(padding, batch, k_len, gen)
    seq_lens = random_seq_lens(batch, k_len, gen) if case.options.get("packed") else None
    prefix = None
    if case.options.get("prefix_per_row"):
        prefix = torch.randint(0, k_len + 1, (batch,), generator=gen)
    mask = strategy(
        q_len, k_len, key_padding=key_padding, q_offset=q_offset, seq_lens=seq_lens,
        prefix_lengths=prefix,
    )  # fmt: skip
    offset = k_len - q_len if q_offset is None else q_offset
    return BuiltMask(strategy, mask, batch, q_len, k_len, offset, key_padding, seq_lens, prefix)


def brute_force_keep(case: MaskCase, built: BuiltMask) -> torch.Tensor:
    """Bool (B, Tq, Tk) from the definitions, one query and key position at a time."""

    def segment(b: int, pos: int) -> int:
        end = 0
        for index, length in enumerate(built.seq_lens[b]):  # type: ignore[index]
            end += length
            if pos < end:
                return index
        raise AssertionError("position past the packed sequences")

    p = case.params
    pad = None if built.key_padding is None else built.key_padding.tolist()
    prefixes = None if built.prefix_lengths is None else built.prefix_lengths.tolist()
    keep = [[[False] * built.k_len for _ in range(built.q_len)] for _ in range(built.batch)]
    for b in range(built.batch):
        for i in range(built.q_len):
            q = built.q_offset + i  # absolute position of the query
            for j in range(built.k_len):
                if case.name == "none":
                    ok = True
                elif case.name == "causal":
                    ok = j <= q
                elif case.name == "sliding_window":
                    ok = q - p["window"] < j <= q
                elif case.name == "prefix_lm":
                    prefix = p.get("length", 0) if prefixes is None else prefixes[b]
                    ok = j <= q or j < prefix
                elif case.name == "block_diagonal":
                    ok = j <= q if p.get("causal", True) else True
                else:
                    pytest.fail(f"no brute-force definition for mask {case.name!r}")
                if built.seq_lens is not None:
                    ok = ok and segment(b, q) == segment(b, j)
                if pad is not None:
                    ok = ok and pad[b][j]
                keep[b][i][j] = ok
    return torch.tensor(keep, dtype=torch.bool)


@pytest.fixture
def make_mask(gen: torch.Generator):
    """``make_mask(case, batch=, shape=, padding=, key_padding=) -> BuiltMask``."""
    return functools.partial(build_mask, gen=gen)


@pytest.fixture
def brute_keep():
    """``brute_keep(case, built) -> bool (B, Tq, Tk)``, the brute-force definition."""
    return brute_force_keep
