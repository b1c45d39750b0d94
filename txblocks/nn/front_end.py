"""What a front end (kind ``front_end``) is given to build from.

A front end turns a model's raw inputs into its first hidden states: token ids into
embeddings (``tokens``), pixels into patch tokens (``patches``). Its factory receives
the :class:`FrontEndInputs` of the architecture being built, then its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from txblocks.nn.dims import ModelDims

__all__ = ["FrontEndInputs"]


@dataclass(frozen=True)
class FrontEndInputs:
    """What the architecture offers a front end.

    Attributes:
        dims: the model's sizes.
        arch: the spec's architecture (``decoder``, ``encoder``, ``seq2seq``, ``vit``).
        embeddings: the token embeddings the spec's ``embedding`` describes (text
            architectures), or None.
        patches: the patch geometry of a ``vit`` spec, as keyword arguments of
            :class:`txblocks.nn.vit.PatchEmbedding` (``image_size``, ``patch_size``,
            ``channels``, ``dim``, ``class_token``, ``register_tokens``, ``position``,
            ``dropout``), or None.
    """

    dims: ModelDims
    arch: str
    embeddings: nn.Module | None = None
    patches: dict[str, Any] | None = field(default=None)
