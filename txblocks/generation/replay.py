"""The compiled decoding step called without dynamo after a generation's first step.

Each call of a ``torch.compile``'d function runs dynamo's frame hook: a guard lookup and the
bytecode that gathers the graph's ~150 inputs (the weights, the cache, the state) from the
arguments' attributes, before the compiled graph itself. On a CPU step of GPT-2 small that
is ~0.5 ms of ~9 (bf16): the step has just streamed 250 MB of weights through the caches, so
this Python runs on cold ones (a tiny model pays ~0.1 ms).

Every step of a generation passes the same tensors, updated in place (what a CUDA graph
relies on too). So the step's backend is wrapped to record the compiled graph and the
inputs dynamo gave it (:class:`RecordingBackend`); after the generation's first step, which
dynamo runs with every guard checked, :func:`run_recorded` returns that graph bound to those
inputs, and the later steps call it directly. Python side effects of the step (none in
:func:`~txblocks.generation.static_step.decode_step`) happen on the recorded call only, as
with a CUDA graph replay; a graph that returns values (which dynamo's bytecode would store
in Python objects) is not replayed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["RecordingBackend", "run_recorded"]

_calls = threading.local()  # this thread's recorded graph calls, while run_recorded runs


class RecordingBackend:
    """A ``torch.compile`` backend: ``backend`` (a registered name, with inductor
    ``options``), whose compiled graphs record each call's inputs for :func:`run_recorded`.

    Args:
        backend: a name from ``torch._dynamo.list_backends()`` (or ``"eager"``).
        options: inductor config patches (``torch.compile(options=...)``); inductor only.
    """

    def __init__(self, backend: str, options: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.options = options or {}

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        compile_graph = torch._dynamo.lookup_backend(self.backend)
        extra = {"config_patches": self.options} if self.options else {}
        graph = compile_graph(gm, example_inputs, **extra)

        def recorded(*inputs: Any) -> Any:
            outputs = graph(*inputs)
            calls = getattr(_calls, "list", None)
            if calls is not None:
                calls.append((graph, inputs, outputs))
            return outputs

        return recorded


def run_recorded(call: Callable[[], Any]) -> Callable[[], Any] | None:
    """Run ``call`` (a step through its ``torch.compile`` wrapper); return its compiled graph
    bound to the inputs it was given, to run the same step again without dynamo. None unless
    ``call`` ran exactly one graph compiled by a :class:`RecordingBackend` (not so if it ran
    eagerly, e.g. under ``torch.compiler.set_stance("force_eager")``), and that graph returned
    nothing: a graph's outputs are what dynamo's bytecode then stores in Python objects (an
    attribute set to a new tensor), which a replay would not do."""
    _calls.list = recorded = []
    try:
        call()
    finally:
        _calls.list = None
    if len(recorded) != 1 or recorded[0][2]:
        return None
    graph, inputs, _ = recorded[0]

    def replay() -> Any:
        return graph(*inputs)

    return replay
