"""The compiled decoding step replayed as a CUDA graph.

On a GPU a decoding step of a small model is bound by the host: Python and the launch of a
few hundred small kernels take longer than the kernels themselves. The compiled step reads
and writes only tensors that live for the whole generation (the static cache, the decoding
state, the weights) and never syncs with the host, so one captured call replays every later
step with a single launch (the pattern of gpt-fast and of ``mode="reduce-overhead"``, done
here by an explicit :class:`torch.cuda.CUDAGraph` capture so the persistent tensors are
updated in place rather than copied into graph-owned inputs).

A graph is captured per generation (per cache and state, whose addresses it records); the
compiled code behind it is shared by every generation of the same shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["WARMUP_STEPS", "GraphedStep", "use_cuda_graph"]

#: Steps run normally (on a side stream) before the capture, the first time a compiled step
#: runs for its shapes: the first compiles it, the second runs it with cuBLAS workspaces and
#: the allocator in their steady state. Later generations of the same shapes capture at once.
WARMUP_STEPS = 2


def use_cuda_graph(requested: bool | None, device: torch.device) -> bool:
    """Whether a generation on ``device`` replays its compiled step as a CUDA graph.

    ``requested`` is ``GenerationConfig.cuda_graph``: None means yes on CUDA; True on
    another device is an error, named here before any work.
    """
    if requested is None:
        return device.type == "cuda"
    if requested and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the model on a CUDA device, it is on {device}; "
                         "leave cuda_graph unset (None) to use graphs wherever there is CUDA")
    return requested


class GraphedStep:
    """``step(model, cache, state, sampling)``, replayed from a CUDA graph after a warm-up.

    The first ``warmup`` calls run ``step`` on a side stream; the next one
    captures a call and replays it (a capture records the kernels without running them);
    every later call is one ``replay()``. Each call is one real decoding step.

    If the capture fails (an operation that a graph cannot hold, such as a host sync), the
    step keeps running uncaptured, with a warning; with ``required`` (``cuda_graph=True``)
    the failure is an error instead.

    Args:
        step: the compiled decoding step (it updates its arguments in place).
        required: raise rather than fall back when the capture fails.
        warmup: steps run uncaptured first (0 when ``step`` already ran for these shapes).
    """

    def __init__(self, step: Callable[..., None], *, required: bool = False,
                 warmup: int = WARMUP_STEPS) -> None:
        self.step, self.required, self.warmup = step, required, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.captured = False  # a graph replays the steps (for tests and benchmarks)
        self._failed = False

    def __call__(self, *args: Any) -> None:
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
        elif self._failed:
            self.step(*args)
        elif self.calls <= self.warmup:
            self._on_side_stream(*args)
        else:
            self._capture(*args)

    def _on_side_stream(self, *args: Any) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.step(*args)
        torch.cuda.current_stream().wait_stream(stream)

    def _capture(self, *args: Any) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step(*args)
        except RuntimeError as exc:  # CUDA reports capture failures as RuntimeError
            if self.required:
                raise RuntimeError(
                    "cuda_graph=True: the compiled decoding step could not be captured as a CUDA "
                    f"graph ({exc}); generate with cuda_graph=False, and report the model's spec"
                ) from exc
            warnings.warn(f"the compiled decoding step could not be captured as a CUDA graph "
                          f"({exc}); it runs uncaptured", RuntimeWarning, stacklevel=3)
            self._failed = True
            self.step(*args)
            return
        self.graph, self.captured = graph, True
        graph.replay()  # the capture recorded this step; now it runs
