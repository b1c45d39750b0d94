"""Helpers shared by the benchmarks: medians of repeats and machine rates measured in-run."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matvec_bandwidth(dtype: torch.dtype, *, size: int = 4096, repeats: int = 20) -> float:
    """Bytes per second a matrix-vector product streams from a (size × size) weight."""
    w = torch.randn(size, size, dtype=dtype)
    x = torch.randn(1, size, dtype=dtype)
    seconds = median_seconds(lambda: [x @ w.T for _ in range(10)], repeats=repeats) / 10
    return w.numel() * w.element_size() / seconds


def matmul_rate(dtype: torch.dtype, *, size: int = 2048) -> float:
    """FLOP/s of a square matrix product."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats=5)


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")
