"""Helpers shared by the benchmarks: interleaved medians, peak memory and machine rates
measured in the same run."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return compare({"fn": fn}, repeats=repeats, warmup=warmup)["fn"]


def compare(fns: dict[str, Callable[[], object]], *, repeats: int = 5,
            warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run round-robin so that a slow spell of the machine
    hits every contender alike (ratios stay fair even when absolute times drift)."""
    return {name: statistics.median(ts) for name, ts in
            compare_runs(fns, repeats=repeats, warmup=warmup).items()}


def compare_runs(fns: dict[str, Callable[[], object]], *, repeats: int = 5,
                 warmup: int = 1) -> dict[str, list[float]]:
    """The seconds of each function's every repeat, run round-robin as :func:`compare` runs
    them: the i-th times of two functions were taken one after the other, so their ratio is
    fair even where the machine's speed jumps between repeats (see :func:`paired_median`)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired_median(numerators: list[float], denominators: list[float]) -> float:
    """The median of the repeat-by-repeat ratios of two :func:`compare_runs` time lists.

    On a shared virtual machine the memory's bandwidth can jump by half for seconds at a
    time (measured here: 28-34 GB/s, then 45-55 GB/s); a ratio of two medians can then
    compare a contender's slow spell with the bound's fast one, a ratio per repeat cannot."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by tensors while ``fn()`` runs, above what was live before.

    On CUDA, the allocator's own peak; on CPU (which keeps no such statistic), the running
    sum of the profiler's per-operator allocations and frees in time order.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def read_blocks(n_bytes: float, dtype: torch.dtype, *, size: int = 4096,
                device: str | torch.device = "cpu") -> tuple[list[torch.Tensor], int]:
    """(size × size) random blocks adding up to about ``n_bytes`` (at least one), and their
    bytes: what a read of that many weights streams."""
    element = torch.tensor([], dtype=dtype).element_size()
    count = max(1, round(n_bytes / (size * size * element)))
    blocks = [torch.randn(size, size, dtype=dtype, device=device) for _ in range(count)]
    return blocks, count * size * size * element


def read_bandwidth(dtype: torch.dtype, *, total_bytes: int = 512 * 2**20, repeats: int = 5,
                   device: str | torch.device = "cpu") -> float:
    """Bytes per second memory delivers to a plain streaming read (``w.sum()`` over
    :func:`read_blocks` of ``total_bytes``): the rate no kernel that reads the weights once
    can beat, whatever its arithmetic."""
    blocks, n_bytes = read_blocks(total_bytes, dtype, device=device)
    seconds = median_seconds(lambda: [w.sum() for w in blocks], repeats=repeats)  # syncs
    return n_bytes / seconds


def matmul_rate(dtype: torch.dtype, *, size: int = 2048, device: str = "cpu") -> float:
    """FLOP/s of a square matrix product."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats=5)


def machine() -> str:
    """A one-line description of where the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}, "
            f"torch {torch.__version__}")
