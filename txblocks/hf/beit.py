"""BEiT (``BeitModel``, ``BeitForImageClassification``) <-> a ``vit`` with LayerScale and a
2-D relative position bias.

BEiT (Bao et al. 2022) is a ViT (:mod:`txblocks.hf.vit`: ``layernorm_before`` /
``layernorm_after``, ``mlp.fc1`` / ``fc2``) whose blocks scale both branch outputs by learned
vectors ``lambda_1`` / ``lambda_2`` (``block.layer_scale: layer_scale_init_value``; LayerScale,
Touvron et al. 2021) and add a learned bias per head for each 2-D offset between patches
(``position: {type: relative_bias_2d, per_layer}``: one table per layer with
``use_relative_position_bias``, one shared by every layer with
``use_shared_relative_position_bias``). q, k and v are unfused because ``k_proj`` has no bias
(``attention.k_bias: false``). Absolute positions are optional
(``use_absolute_position_embeddings`` -> ``patch_position: learned``).

With ``use_mean_pooling`` (the default) the encoder has no final norm and the classifier reads
``LayerNorm(mean of the patch tokens)``: ``classifier {pooling: mean, norm: layernorm}``, the
norm being ``pooler.layernorm``; without it, a final ``layernorm`` and the class token.
``BeitModel``'s pooler has no other txblocks counterpart: ``from_hf`` skips it and ``to_hf``
builds ``BeitModel(add_pooling_layer=False)``. Other image sizes than the config's
(``interpolate_pos_encoding``), ``use_mask_token`` and the segmentation / masked-image classes
are not converted.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["BEIT"]

_TABLE = "relative_position_bias.relative_position_bias_table"

WEIGHTS = (
    Rule("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
    Rule("embeddings.cls_token", "patch_embed.cls_token"),
    Rule("embeddings.position_embeddings", "patch_embed.position"),
    Rule(f"layers.{{i}}.{_TABLE}", "position.tables.{i}"),
    Rule("shared_position_bias.relative_position_bias_table", "position.tables.0"),
    Rule("layers.{i}.attention.k_proj.weight", "blocks.{i}.attention.k.weight"),
    *(Rule(f"layers.{{i}}.attention.{x}_proj.{{p}}", f"blocks.{{i}}.attention.{x}.{{p}}")
      for x in "qv"),
    Rule("layers.{i}.attention.o_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("layers.{i}.lambda_1", "blocks.{i}.attention_scale.gamma"),
    Rule("layers.{i}.lambda_2", "blocks.{i}.ffn_scale.gamma"),
    Rule("layers.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
    Rule("layers.{i}.mlp.fc1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("layers.{i}.mlp.fc2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("layers.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
    Rule("layernorm.{p}", "final_norm.{p}"),
)  # fmt: skip


def _position(c: ConfigView) -> Any:
    per_layer, shared = bool(c.use_relative_position_bias), bool(c.use_shared_relative_position_bias)
    if per_layer and shared:
        c.unsupported("use_shared_relative_position_bias", (
            "together with use_relative_position_bias (two tables summed in each layer); "
            "txblocks' relative_bias_2d has one or the other"))  # fmt: skip
    if per_layer or shared:
        return {"type": "relative_bias_2d", "per_layer": per_layer}
    return "none"


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a BeitConfig (without head)."""
    if c.use_mask_token:
        c.unsupported("use_mask_token", "read only by BeitForMaskedImageModeling's masked inputs")
    if isinstance(c.image_size, (list, tuple)) or isinstance(c.patch_size, (list, tuple)):
        c.unsupported("image_size", "BEiT's relative bias table assumes square sizes here")
    scale = c.layer_scale_init_value
    norm = {"type": "layernorm", "eps": c.layer_norm_eps}
    return {
        "arch": "vit",
        "image_size": c.image_size,
        "patch_size": c.patch_size,
        "channels": c.num_channels,
        "class_token": True,
        "register_tokens": 0,
        "patch_position": "learned" if c.use_absolute_position_embeddings else "none",
        "position": _position(c),
        "embedding_dropout": c.hidden_dropout_prob,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "block": {
            "layout": "pre_norm",
            "norm": norm,
            "attention": {"mask": "none", "bias": True, "k_bias": False, "fused_qkv": False,
                          "dropout": c.attention_probs_dropout_prob},
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True, "dropout": 0.0,
                    "activation": activation(c, "hidden_act")},
            "dropout": c.hidden_dropout_prob,
            "layer_scale": scale if scale > 0 else None,
        },
        "final_norm": not c.use_mean_pooling,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """BeitConfig fields of a spec (checked by converting back)."""
    block = s.block
    position = getattr(s.position, "type", "none")
    per_layer = position == "relative_bias_2d" and s.position.per_layer
    return {
        "image_size": s.image_hw[0],
        "patch_size": s.patch_hw[0],
        "num_channels": s.channels,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None)),
        "hidden_dropout_prob": block.dropout,
        "attention_probs_dropout_prob": block.attention.dropout,
        "layer_norm_eps": getattr(block.norm, "eps", 1e-12),
        "layer_scale_init_value": float(block.layer_scale or 0.0),
        "use_absolute_position_embeddings": s.patch_position == "learned",
        "use_relative_position_bias": per_layer,
        "use_shared_relative_position_bias": position == "relative_bias_2d" and not per_layer,
        "use_mean_pooling": not s.use_final_norm,
        "initializer_range": s.init_std,
    }


def _classifier(c: ConfigView) -> dict[str, Any]:
    if c.num_labels < 1:
        c.unsupported("num_labels", "0 makes HF's classifier an identity; need 1 or more")
    mean = bool(c.use_mean_pooling)
    return {"type": "classifier", "n_classes": c.num_labels, "pooling": "mean" if mean else "cls",
            "pooler": False, "dropout": 0.0,
            "norm": {"type": "layernorm", "eps": c.layer_norm_eps} if mean else None}  # fmt: skip


_POOLER = "beit.pooler.layernorm.{p}"
_TRAINING_OR_OTHER_CLASSES = {
    key: "read only by BeitForSemanticSegmentation / BeitBackbone"
    for key in ("pool_scales", "use_auxiliary_head", "auxiliary_loss_weight", "auxiliary_channels",
                "auxiliary_num_convs", "auxiliary_concat_input", "semantic_loss_ignore_index",
                "add_fpn", "reshape_hidden_states", "out_features", "out_indices", "stage_names")
}

BEIT = HFFamily(
    name="beit",
    arch="vit",
    model_type="beit",
    config_class="BeitConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("BeitModel", None, ignore=("pooler.",), init_kwargs={"add_pooling_layer": False}),
        HFHead(
            "BeitForImageClassification", "classifier", spec=_classifier,
            config=lambda head: {"num_labels": head["n_classes"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"), Rule(_POOLER, "head.norm.{p}")),
        ),
    ),
    ignored={
        "vocab_size": "read only by BeitForMaskedImageModeling",
        "drop_path_rate": "stochastic depth, training only",
        **_TRAINING_OR_OTHER_CLASSES,
    },
)  # fmt: skip
