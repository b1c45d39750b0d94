"""CLIP's text tower (``CLIPTextModel``) <-> a pre-norm encoder with a causal mask.

The text transformer of CLIP (Radford et al. 2021) reads tokens with learned positions
(``embeddings.token_embedding`` / ``position_embedding``), runs pre-norm blocks
(``layer_norm1`` / ``layer_norm2`` are ``norm1`` / ``norm2``; q, k, v fused into ``qkv``,
``out_proj``; ``mlp.fc1`` / ``fc2`` with ``hidden_act``, ``quick_gelu`` by default) under a
causal mask combined with the padding mask, and a ``final_layer_norm``: txblocks'
``encoder`` with ``attention.mask: causal``. Its ``last_hidden_state`` is reproduced; the
``pooler_output`` is the row of the end-of-text token, picked from the input ids (the
highest id when ``eos_token_id`` is 2, else the first ``eos_token_id``), which txblocks'
heads do not do: take it from ``last_hidden_state``. ``CLIPTextModelWithProjection`` (a
projection of that row) is refused for the same reason.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["CLIP_TEXT", "ENCODER_LAYERS", "encoder_block", "encoder_config"]

#: The encoder layers of both CLIP towers (text and vision name them alike).
ENCODER_LAYERS = (
    Rule(tuple(f"encoder.layers.{{i}}.self_attn.{x}_proj.{{p}}" for x in "qkv"),
         "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule("encoder.layers.{i}.self_attn.out_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("encoder.layers.{i}.layer_norm1.{p}", "blocks.{i}.norm1.{p}"),
    Rule("encoder.layers.{i}.mlp.fc1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("encoder.layers.{i}.mlp.fc2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("encoder.layers.{i}.layer_norm2.{p}", "blocks.{i}.norm2.{p}"),
)  # fmt: skip

WEIGHTS = (
    Rule("embeddings.token_embedding.weight", "embeddings.tokens.weight"),
    Rule("embeddings.position_embedding.weight", "position.embedding.weight"),
    *ENCODER_LAYERS,
    Rule("final_layer_norm.{p}", "final_norm.{p}"),
)  # fmt: skip


def encoder_block(c: ConfigView, mask: str) -> dict[str, Any]:
    """The block of both CLIP towers (text: ``causal``, vision: ``none``)."""
    return {
        "layout": "pre_norm",
        "norm": {"type": "layernorm", "eps": c.layer_norm_eps},
        "attention": {"mask": mask, "bias": True, "fused_qkv": True,
                      "dropout": c.attention_dropout},
        "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True, "dropout": 0.0,
                "activation": activation(c, "hidden_act")},
        "dropout": 0.0,
    }  # fmt: skip


def encoder_config(s: Any) -> dict[str, Any]:
    """The config fields both CLIP towers read from their encoder (checked by converting
    back)."""
    block = s.block
    return {
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None)),
        "layer_norm_eps": getattr(block.norm, "eps", 1e-5),
        "attention_dropout": block.attention.dropout,
        "initializer_range": s.init_std,
    }


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a CLIPTextConfig (without head)."""
    return {
        "arch": "encoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "position": {"type": "learned", "offset": 0},
        "embedding": {"token_types": 0, "norm": None, "dropout": 0.0},
        "block": encoder_block(c, "causal"),
        "final_norm": True,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """CLIPTextConfig fields of a spec (checked by converting back)."""
    return {"vocab_size": s.vocab_size, "max_position_embeddings": s.max_seq_len,
            **encoder_config(s)}


CLIP_TEXT = HFFamily(
    name="clip_text",
    arch="encoder",
    model_type="clip_text_model",
    config_class="CLIPTextConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(HFHead("CLIPTextModel", None),),
    ignored={
        "projection_dim": "read only by CLIPTextModelWithProjection",
        "initializer_factor": "scales the initialisation only",
    },
)
