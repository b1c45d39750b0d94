"""``txblocks doctor``: what this machine can run, and why not.

It prints torch, CUDA and the GPU; xformers' build and whether its CUDA extension loaded;
every plugin's status and import time; and, for a spec, which attention kernels can run
its layers here (``auto``'s choice per layer) and the reason for each one that cannot.
It exits 1 when a kernel that the spec names cannot run on the device.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from txblocks.errors import BuildError, SpecError

__all__ = ["KernelReport", "add_doctor_parser", "environment", "kernel_reports", "layer_calls",
           "layer_kernels"]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """torch, CUDA, the GPU and xformers, as ``name -> description``."""
    info = {"torch": torch.__version__, "CUDA (torch built with)": str(torch.version.cuda)}
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        memory = torch.cuda.get_device_properties(index).total_memory / 2**30
        info["GPU"] = f"{torch.cuda.get_device_name(index)} (sm{major}{minor}, {memory:.0f} GiB)"
    else:
        info["GPU"] = "none visible to torch"
    info["xformers"] = _version("xformers")
    if info["xformers"] != "not installed":
        info["xformers extension"] = _xformers_extension()
    return info


def xformers_build() -> dict[str, Any] | None:
    """What the installed xformers was built for (its ``cpp_lib.json``: torch, CUDA, Python),
    or None when xformers is not installed or ships no such file."""
    import importlib.resources
    import json

    try:
        text = importlib.resources.files("xformers").joinpath("cpp_lib.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None
    return dict(json.loads(text).get("version", {}))


def _xformers_extension() -> str:
    """Whether xformers' compiled extension loaded, and the torch and CUDA it was built for."""
    try:
        from xformers import _cpp_lib
    except Exception as exc:  # broken install
        return f"cannot import ({type(exc).__name__}: {exc})"
    built = xformers_build()
    target = ""
    if built:
        target = f" (built for torch {built.get('torch')}, CUDA {built.get('cuda')})"
    loaded = "loaded" if getattr(_cpp_lib, "_built_with_cuda", False) else "NOT loaded"
    return loaded + target


@dataclass(frozen=True)
class KernelReport:
    """One attention kernel on one device for one spec.

    Attributes:
        kernel: the registry name.
        named: True when the spec names it for some layer.
        layers: the layers it would run (``auto``'s choice, or layers naming it).
        reasons: why it cannot run here; empty when it can.
    """

    kernel: str
    named: bool
    layers: tuple[str, ...]
    reasons: tuple[str, ...]


def layer_calls(
    spec: Any, device: torch.device, dtype: torch.dtype, *, seq_len: int, training: bool
) -> Iterator[tuple[str, Any, Any]]:
    """``(layer label, its kernel, its self-attention call)`` for each layer of ``spec``:
    batch 2, ``seq_len`` tokens, no padding; with ``training``, dropout and gradients.

    The model is built on the meta device (nothing allocated); the masks are made on
    ``device`` and positional biases stand in as zeros of their shape.
    """
    from txblocks.attention.kernel import AttentionCall
    from txblocks.build import build_on_meta
    from txblocks.nn.model import TransformerStack

    model = build_on_meta(spec)
    stacks = ([("", model)] if isinstance(model, TransformerStack)
              else [("encoder ", model.encoder), ("decoder ", model.decoder)])  # fmt: skip
    seq_len = min(seq_len, getattr(spec, "max_seq_len", seq_len))
    for prefix, stack in stacks:
        for i, (block, strategy) in enumerate(zip(stack.blocks, stack.masks, strict=True)):
            attention = block.attention
            mask = strategy(seq_len, seq_len)
            bias = stack.position.attention_bias(seq_len, seq_len, 0, strategy.causal,
                                                 torch.device("meta"), dtype)  # fmt: skip
            if bias is not None:
                mask = mask.with_bias(torch.zeros(bias.shape, device=device, dtype=dtype,
                                                  requires_grad=training))  # fmt: skip
            call = AttentionCall(
                device=device, dtype=dtype, batch=2, q_len=seq_len, k_len=seq_len,
                n_heads=attention.n_heads, n_kv_heads=attention.n_kv_heads,
                head_dim=attention.head_dim, mask=mask,
                dropout=attention.dropout if training else 0.0, softcap=attention.softcap,
                requires_grad=training,
            )  # fmt: skip
            yield f"{prefix}{i}", attention.kernel, call


def kernel_reports(
    spec: Any, device: torch.device, dtype: torch.dtype | None = None, *, seq_len: int = 128
) -> list[KernelReport]:
    """Which attention kernels can run ``spec``'s layers on ``device``, forward and backward.

    Each layer's call (see :func:`layer_calls`), for inference and for training, is put to
    every registered kernel; the layers column says where ``auto`` (or the kernel the
    layer names) would run it, ``(train)`` marking a choice that differs in training.
    """
    from txblocks.attention.auto import AutoKernel
    from txblocks.plugins import default_registry

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    registry = default_registry()
    kernels = {name: registry.config("attention", name).build()
               for name in registry.names("attention") if name != "auto"}  # fmt: skip
    named: set[str] = set()
    runs: dict[str, list[str]] = {name: [] for name in kernels}
    reasons: dict[str, set[str]] = {name: set() for name in kernels}
    inference: dict[str, str | None] = {}
    calls = [(label + (" (train)" if training else ""), label, kernel, call)
             for training in (False, True)
             for label, kernel, call in layer_calls(spec, device, dtype, seq_len=seq_len,
                                                    training=training)]  # fmt: skip
    for shown, label, kernel, call in calls:
        if isinstance(kernel, AutoKernel):
            chosen = _choose(kernel, call)
        else:
            named.add(kernel.name)
            chosen = kernel.name if not kernel.why_not(call) else None
        for name, other in kernels.items():
            reasons[name].update(other.why_not(call))
        if shown == label:
            inference[label] = chosen
        elif inference.get(label) == chosen:
            continue  # training runs where inference does: said once
        if chosen is not None:
            runs.setdefault(chosen, []).append(shown)
    return [KernelReport(name, name in named, tuple(runs.get(name, ())),
                         tuple(sorted(reasons[name]))) for name in kernels]  # fmt: skip


def layer_kernels(
    spec: Any, device: torch.device, dtype: torch.dtype | None = None, *, seq_len: int = 128
) -> dict[str, str]:
    """``layer label -> kernel`` for inference on ``device``: ``auto → sdpa`` where ``auto``
    chooses, the named kernel otherwise, ``… (cannot run)`` where nothing can."""
    from txblocks.attention.auto import AutoKernel

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kernels = {}
    for label, kernel, call in layer_calls(spec, device, dtype, seq_len=seq_len, training=False):
        if isinstance(kernel, AutoKernel):
            chosen = _choose(kernel, call)
            kernels[label] = f"auto → {chosen}" if chosen else "auto (nothing can run)"
        else:
            kernels[label] = kernel.name + (" (cannot run)" if kernel.why_not(call) else "")
    return kernels


def _choose(auto: Any, call: Any) -> str | None:
    try:
        return auto.select(call).name
    except Exception:  # KernelUnavailableError: no candidate; reported per kernel
        return None


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    """Print the environment, the plugins and (with a spec) the kernels; exit 1 when a
    kernel the spec names cannot run on ``--device``."""
    from txblocks.plugins import default_registry, plugin_status
    from txblocks.spec.io import load_spec

    table = Table(title="environment", show_header=False)
    for name, value in environment().items():
        table.add_row(name, value)
    console.print(table)
    plugins = Table(title="plugins")
    for column in ("plugin", "distribution", "status", "import", "reason"):
        plugins.add_column(column, overflow="fold")
    for status in plugin_status(default_registry()):
        plugins.add_row(status.name, str(status.distribution), status.status,
                        f"{status.import_seconds * 1000:.0f} ms", status.reason or "")
    console.print(plugins)
    if args.spec is None:
        return 0
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        console.print(f"--device {args.device!r}: {exc}", markup=False, highlight=False)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        console.print(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here, "
                      "so no kernel can be checked on one", markup=False, highlight=False)
        return 1
    try:
        spec = load_spec(Path(args.spec))
        reports = kernel_reports(spec, device, seq_len=args.seq_len)
    except (SpecError, BuildError, RuntimeError) as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return 1
    kernels = Table(title=f"attention kernels for {args.spec} on {device}")
    for column in ("kernel", "named", "runs layers", "cannot run because"):
        kernels.add_column(column, overflow="fold")
    failed = False
    for report in reports:
        failed |= report.named and bool(report.reasons)
        kernels.add_row(report.kernel, "yes" if report.named else "",
                        _layers(report.layers), "\n".join(report.reasons) or "")
    console.print(kernels)
    if failed:
        console.print("a kernel the spec names cannot run here (see above)", style="red")
    return 1 if failed else 0


def _layers(labels: tuple[str, ...]) -> str:
    return ", ".join(labels) if len(labels) <= 6 else f"{len(labels)} layers"


def add_doctor_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``doctor`` subcommand to ``sub`` (the result of ``add_subparsers``)."""
    doc = sub.add_parser("doctor", help="torch, CUDA, xformers, plugins; which kernels can run a spec")
    doc.add_argument("spec", nargs="?", help="also check the attention kernels of this spec")
    doc.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    doc.add_argument("--seq-len", type=int, default=128, help="tokens of the checked call")
    doc.set_defaults(run=cmd_doctor)
    return doc
