"""ViT (``ViTModel``, ``ViTForImageClassification``) <-> a txblocks ``vit``.

ViT (Dosovitskiy et al. 2021): ``embeddings.patch_embeddings.projection`` (a strided
Conv2d), ``cls_token`` and ``position_embeddings`` (one row for the class token, then one
per patch) are ``patch_embed.proj``, ``.cls_token`` and ``.position``. Pre-norm blocks
(``layernorm_before`` / ``layernorm_after`` are ``norm1`` / ``norm2``), q, k, v fused into
``qkv`` (biased when ``qkv_bias``; the output projection always is), a final
``layernorm``. The classifier reads the class token (``classifier {pooling: cls}``).

``ViTModel``'s pooler has no txblocks counterpart: ``from_hf`` skips it and ``to_hf``
builds ``ViTModel(add_pooling_layer=False)``.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["VIT"]

WEIGHTS = (
    Rule("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
    Rule("embeddings.cls_token", "patch_embed.cls_token"),
    Rule("embeddings.position_embeddings", "patch_embed.position"),
    Rule(tuple(f"layers.{{i}}.attention.{x}_proj.{{p}}" for x in "qkv"),
         "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule("layers.{i}.attention.o_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("layers.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
    Rule("layers.{i}.mlp.fc1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("layers.{i}.mlp.fc2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("layers.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
    Rule("layernorm.{p}", "final_norm.{p}"),
)  # fmt: skip


def _size(value: Any) -> Any:
    """An int, or [height, width] (HF takes both)."""
    return value if isinstance(value, int) else [int(v) for v in value]


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a ViTConfig (without head)."""
    eps = c.layer_norm_eps
    return {
        "arch": "vit",
        "image_size": _size(c.image_size),
        "patch_size": _size(c.patch_size),
        "channels": c.num_channels,
        "class_token": True,
        "register_tokens": 0,
        "patch_position": "learned",
        "position": "none",
        "embedding_dropout": c.hidden_dropout_prob,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "head_dim": c.get("head_dim") or c.hidden_size // c.num_attention_heads,
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "layernorm", "eps": eps},
            "attention": {"mask": "none", "bias": True, "qkv_bias": bool(c.qkv_bias),
                          "out_bias": True, "fused_qkv": True,
                          "dropout": c.attention_probs_dropout_prob},
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True, "dropout": 0.0,
                    "activation": activation(c, "hidden_act")},
            "dropout": c.hidden_dropout_prob,
        },
        "final_norm": True,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """ViTConfig fields of a spec (checked by converting back)."""
    block = s.block
    attention = block.attention
    out = {
        "image_size": _size(s.image_size),
        "patch_size": _size(s.patch_size),
        "num_channels": s.channels,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None)),
        "hidden_dropout_prob": block.dropout,
        "attention_probs_dropout_prob": attention.dropout,
        "layer_norm_eps": getattr(block.norm, "eps", 1e-12),
        "qkv_bias": bool(attention.bias if attention.qkv_bias is None else attention.qkv_bias),
        "initializer_range": s.init_std,
    }
    if s.head_size != s.d_model // s.n_heads:
        out["head_dim"] = s.head_size  # not a ViTConfig field, but ViTAttention reads it
    return out


def _classifier(c: ConfigView) -> dict[str, Any]:
    if c.num_labels < 1:
        c.unsupported("num_labels", "0 makes HF's classifier an identity; need 1 or more")
    return {"type": "classifier", "n_classes": max(c.num_labels, 1), "pooling": "cls",
            "pooler": False, "dropout": 0.0}  # fmt: skip


VIT = HFFamily(
    name="vit",
    arch="vit",
    model_type="vit",
    config_class="ViTConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("ViTModel", None, ignore=("pooler.",), init_kwargs={"add_pooling_layer": False}),
        HFHead(
            "ViTForImageClassification", "classifier", spec=_classifier,
            config=lambda head: {"num_labels": head["n_classes"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"),),
        ),
    ),
    ignored={
        "encoder_stride": "read only by ViTForMaskedImageModeling",
        "pooler_output_size": "read only by ViTModel's pooler (skipped)",
        "pooler_act": "read only by ViTModel's pooler (skipped)",
    },
)  # fmt: skip
