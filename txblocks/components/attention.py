"""Built-in attention kernels: ``eager``, ``sdpa``, ``xformers`` and ``auto``.

Each factory takes its validated config and returns an
:class:`~txblocks.attention.kernel.AttentionKernel`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from txblocks.attention.auto import AutoKernel
from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionKernel
from txblocks.attention.sdpa import SDPAKernel
from txblocks.attention.xformers_kernel import XFormersKernel
from txblocks.registry import ComponentConfig, Registry

__all__ = ["AutoConfig", "EagerConfig", "SDPAConfig", "XFormersConfig", "register"]

KernelName = Literal["xformers", "sdpa", "eager"]
_KERNELS: dict[str, type[AttentionKernel]] = {
    "xformers": XFormersKernel,
    "sdpa": SDPAKernel,
    "eager": EagerKernel,
}


class EagerConfig(ComponentConfig):
    """Plain-math reference attention (explicit matmul and softmax); no parameters."""


class SDPAConfig(ComponentConfig):
    """PyTorch scaled_dot_product_attention; no parameters."""


class XFormersConfig(ComponentConfig):
    """xformers memory_efficient_attention (CUDA only); no parameters."""


class AutoConfig(ComponentConfig):
    """The fastest kernel that can run each call, chosen among ``candidates``."""

    candidates: list[KernelName] = Field(
        default_factory=lambda: ["xformers", "sdpa", "eager"],
        min_length=1,
        description="built-in kernels to choose from; the highest priority that can run wins",
    )


def eager(config: EagerConfig) -> EagerKernel:
    """Plain-math reference attention: explicit matmul and softmax, softcap supported."""
    return EagerKernel()


def sdpa(config: SDPAConfig) -> SDPAKernel:
    """PyTorch scaled_dot_product_attention: any device, no softcap."""
    return SDPAKernel()


def xformers(config: XFormersConfig) -> XFormersKernel:
    """xformers memory_efficient_attention: CUDA only, fp16/bf16/fp32, no softcap."""
    return XFormersKernel()


def auto(config: AutoConfig) -> AutoKernel:
    """Picks xformers on CUDA, else SDPA, else eager, per call; explains when none fits."""
    return AutoKernel(_KERNELS[name]() for name in dict.fromkeys(config.candidates))


def register(registry: Registry) -> None:
    """Register the built-in attention kernels (kind ``attention``)."""
    registry.add("attention", "eager", eager, EagerConfig)
    registry.add("attention", "sdpa", sdpa, SDPAConfig)
    registry.add("attention", "xformers", xformers, XFormersConfig)
    registry.add("attention", "auto", auto, AutoConfig)
