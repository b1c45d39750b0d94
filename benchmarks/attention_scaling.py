"""How attention kernels scale with length on CPU: linear kernels vs dense ones.

Run by hand (never by the tests), with the plugins installed::

    .venv/bin/pip install --no-deps -e plugins/txblocks-sparse -e plugins/txblocks-linear \\
        -e plugins/txblocks-lsh
    .venv/bin/python benchmarks/attention_scaling.py                  # 512 ... 8192
    .venv/bin/python benchmarks/attention_scaling.py --lengths 1024 2048 --backward

Two groups, every kernel timed in the same run on the same inputs (B=1, H=4, D=64,
float32): under a Longformer mask (causal window 256, one global token), the
``block_sparse`` kernel against ``eager`` and ``sdpa`` given the dense form of the same
mask; under a causal mask, ``linear``, ``performer`` and ``lsh`` against ``sdpa``
(``is_causal``). Each timing includes building the mask for that call. The table gives
milliseconds per call and, after each, the ratio to the previous length: about 2x per
doubling for a linear-cost kernel, about 4x for a quadratic one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from txblocks.attention import EagerKernel, SDPAKernel
from txblocks.attention.strategies import CausalStrategy, MaskStrategy

Case = tuple[str, MaskStrategy, Callable[..., torch.Tensor]]


def cases() -> dict[str, list[Case]]:
    """Benchmark groups: (label, mask strategy, kernel), the plugins imported lazily."""
    from txblocks_linear import LinearKernel, PerformerKernel
    from txblocks_lsh import LSHKernel
    from txblocks_sparse import BlockSparseKernel, LongformerStrategy

    longformer = LongformerStrategy(256, causal=True, global_positions=[0], block_size=64)
    causal = CausalStrategy()
    return {
        "longformer mask (causal window 256, 1 global token)": [
            ("block_sparse", longformer, BlockSparseKernel()),
            ("eager", longformer, EagerKernel()),
            ("sdpa", longformer, SDPAKernel()),
        ],
        "causal mask": [
            ("linear", causal, LinearKernel(chunk=64)),
            ("performer(M=64)", causal, PerformerKernel(64, redraw=False).eval()),
            ("lsh(R=2, C=64)", causal, LSHKernel(n_hashes=2, chunk=64)),
            ("sdpa", causal, SDPAKernel()),
        ],
    }


def time_call(kernel: Callable[..., torch.Tensor], strategy: MaskStrategy, length: int,
              *, heads: int, dim: int, repeats: int, backward: bool) -> float:
    """Median seconds of one call (mask built inside), after one warm-up."""
    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(1, length, heads, dim, generator=gen) for _ in range(3))
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))

    def once() -> None:
        mask = strategy(length, length)
        with torch.set_grad_enabled(backward):
            out = kernel(q, k, v, mask, scale=dim**-0.5)
            if backward:
                out.sum().backward()

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    passes = "forward+backward" if args.backward else "forward"
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, B=1, "
          f"H={args.heads}, D={args.dim}, float32, {passes}")
    for group, entries in cases().items():
        print(f"\n{group}: ms per call (x = ratio to the previous length)")
        width = max(len(label) for label, _, _ in entries) + 2  # ms column; ratio after it
        print("length".rjust(8) + "".join(f"{label:>{width}}{'':7}" for label, _, _ in entries))
        previous: dict[str, float] = {}
        for length in args.lengths:
            cells = []
            for label, strategy, kernel in entries:
                seconds = time_call(kernel, strategy, length, heads=args.heads, dim=args.dim,
                                    repeats=args.repeats, backward=args.backward)
                ratio = f"{seconds / previous[label]:.1f}x" if label in previous else ""
                previous[label] = seconds
                cells.append(f"{seconds * 1e3:>{width}.1f}{ratio:>7}")
            print(str(length).rjust(8) + "".join(cells))


if __name__ == "__main__":
    main()
