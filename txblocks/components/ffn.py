"""Built-in feed-forward networks: ``mlp`` and ``glu``."""

from __future__ import annotations

from pydantic import Field

from txblocks.nn.ffn import GLU, MLP
from txblocks.registry import ComponentConfig, Registry, slot


class MLPConfig(ComponentConfig):
    """Two-layer MLP (Vaswani et al. 2017): down(act(up(x)))."""

    hidden: int | None = Field(None, gt=0, description="Hidden width; default 4 · d_model.")
    activation: ComponentConfig = slot("activation", "gelu")
    bias: bool = True
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after the activation.")


class GLUConfig(ComponentConfig):
    """Gated FFN (Shazeer 2020): SwiGLU, GeGLU or ReGLU by activation."""

    hidden: int | None = Field(
        None, gt=0, description="Hidden width; default 8/3 · d_model rounded up to a multiple of 64."
    )
    activation: ComponentConfig = slot("activation", "silu")
    bias: bool = False
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the down projection.")


def mlp(dim: int, config: MLPConfig) -> MLP:
    """A two-layer MLP."""
    hidden = config.hidden or 4 * dim
    return MLP(dim, hidden, config.activation.build(), bias=config.bias, dropout=config.dropout)


def glu(dim: int, config: GLUConfig) -> GLU:
    """A gated FFN."""
    hidden = config.hidden or -(-8 * dim // 192) * 64  # ceil(8/3 · dim / 64) · 64
    return GLU(dim, hidden, config.activation.build(), bias=config.bias, dropout=config.dropout)


def register(registry: Registry) -> None:
    """Register the built-in FFNs."""
    registry.add("ffn", "mlp", mlp, MLPConfig)
    registry.add("ffn", "glu", glu, GLUConfig)
