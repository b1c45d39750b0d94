"""CLIP's vision tower (``CLIPVisionModel``) <-> a ``vit`` whose patches are normed.

The vision transformer of CLIP (Radford et al. 2021) is a ViT with a LayerNorm right after
the patch embeddings, ``pre_layrnorm`` (sic), over every token once the class token is
prepended and the positions added: txblocks' ``front_end: {type: patches, norm: layernorm,
bias: false}`` (the patch convolution has no bias). ``embeddings.class_embedding`` (D,) and
``position_embedding`` (an ``nn.Embedding`` of 1 + N rows) are ``patch_embed.cls_token``
(1, 1, D) and ``patch_embed.position`` (1, 1 + N, D). The blocks are CLIP text's
(:mod:`txblocks.hf.clip_text`: ``layer_norm1`` / ``layer_norm2``, q, k, v fused, ``mlp``
with ``quick_gelu`` by default); there is no final norm on ``last_hidden_state``.

``post_layernorm`` normalizes the class token for ``pooler_output`` only, which txblocks'
heads do not do: ``from_hf`` skips it (take ``pooler_output`` from ``last_hidden_state[:, 0]``
through it) and ``to_hf`` leaves it at its initialisation. ``CLIPVisionModelWithProjection``
(a projection of that pooled row) is refused for the same reason, and
``CLIPForImageClassification`` takes a whole ``CLIPConfig`` (text and vision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from txblocks.hf.clip_text import ENCODER_LAYERS, encoder_block, encoder_config
from txblocks.hf.family import ConfigView, HFFamily, HFHead
from txblocks.hf.rules import Rule

__all__ = ["CLIP_VISION"]


@dataclass(frozen=True)
class _Batched:
    """HF's (…) tensor <-> txblocks' (1, …) or (1, 1, D): a leading size-1 view and back."""

    shape: tuple[int, ...]
    arity = 1

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return tensors[0].reshape(*self.shape, -1) if self.shape else tensors[0][None]

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [tensor.reshape(like[0].shape)]


WEIGHTS = (
    Rule("embeddings.patch_embedding.weight", "patch_embed.proj.weight"),
    Rule("embeddings.class_embedding", "patch_embed.cls_token", _Batched((1, 1))),
    Rule("embeddings.position_embedding.weight", "patch_embed.position", _Batched(())),
    Rule("pre_layrnorm.{p}", "patch_embed.norm.{p}"),
    *ENCODER_LAYERS,
)  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a CLIPVisionConfig (without head)."""
    norm = {"type": "layernorm", "eps": c.layer_norm_eps}
    return {
        "arch": "vit",
        "image_size": c.image_size,
        "patch_size": c.patch_size,
        "channels": c.num_channels,
        "class_token": True,
        "register_tokens": 0,
        "patch_position": "learned",
        "position": "none",
        "front_end": {"type": "patches", "norm": norm, "bias": False},
        "embedding_dropout": 0.0,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "block": encoder_block(c, "none"),
        "final_norm": False,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """CLIPVisionConfig fields of a spec (checked by converting back)."""
    image, patch = s.image_hw, s.patch_hw
    return {
        "image_size": image[0] if image[0] == image[1] else list(image),
        "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
        "num_channels": s.channels,
        **encoder_config(s),
    }


CLIP_VISION = HFFamily(
    name="clip_vision",
    arch="vit",
    model_type="clip_vision_model",
    config_class="CLIPVisionConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(HFHead("CLIPVisionModel", None, ignore=("post_layernorm.",)),),
    ignored={
        "projection_dim": "read only by CLIPVisionModelWithProjection",
        "initializer_factor": "scales the initialisation only",
    },
)
