"""GPT-2 (``GPT2Model``, ``GPT2LMHeadModel``) <-> a pre-norm decoder with learned positions.

GPT-2's ``Conv1D`` stores weights as (in, out): every projection is transposed. ``c_attn``
already holds q, k, v in that order, so it maps to the fused ``qkv`` as is.
``scale_attn_by_inverse_layer_idx`` becomes a per-layer ``attention.scale`` override.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.family import lm_head
from txblocks.hf.rules import Rule

__all__ = ["GPT2"]

WEIGHTS = (
    Rule("wte.weight", "embeddings.tokens.weight"),
    Rule("wpe.weight", "position.embedding.weight"),
    Rule("h.{i}.ln_1.{p}", "blocks.{i}.norm1.{p}"),
    Rule("h.{i}.attn.c_attn.weight", "blocks.{i}.attention.qkv.weight", "transpose"),
    Rule("h.{i}.attn.c_attn.bias", "blocks.{i}.attention.qkv.bias"),
    Rule("h.{i}.attn.c_proj.weight", "blocks.{i}.attention.out.weight", "transpose"),
    Rule("h.{i}.attn.c_proj.bias", "blocks.{i}.attention.out.bias"),
    Rule("h.{i}.ln_2.{p}", "blocks.{i}.norm2.{p}"),
    Rule("h.{i}.mlp.c_fc.weight", "blocks.{i}.ffn.up.weight", "transpose"),
    Rule("h.{i}.mlp.c_fc.bias", "blocks.{i}.ffn.up.bias"),
    Rule("h.{i}.mlp.c_proj.weight", "blocks.{i}.ffn.down.weight", "transpose"),
    Rule("h.{i}.mlp.c_proj.bias", "blocks.{i}.ffn.down.bias"),
    Rule("ln_f.{p}", "final_norm.{p}"),
)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a GPT2Config (without head)."""
    if c.add_cross_attention:
        c.unsupported("add_cross_attention", "txblocks decoders have no cross-attention blocks")
    if c.reorder_and_upcast_attn:
        c.unsupported(
            "reorder_and_upcast_attn",
            "txblocks has no option to scale keys before q·kᵀ and upcast the scores to float32 "
            "(HF's eager attention does); set it to False to accept float rounding differences",
        )
    d_model, n_heads = c.n_embd, c.n_head
    scale = (d_model // n_heads) ** -0.5 if c.scale_attn_weights else 1.0
    layers = []
    if c.scale_attn_by_inverse_layer_idx:  # HF: scaling / float(layer_idx + 1)
        layers = [
            {"select": i, "attention": {"scale": scale / float(i + 1)}} for i in range(c.n_layer)
        ]
    return {
        **gpt2_sizes(c),
        "position": {"type": "learned", "offset": 0},
        "embedding": {"dropout": c.embd_pdrop},
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "layernorm", "eps": c.layer_norm_epsilon},
            "attention": {
                "mask": "causal", "bias": True, "fused_qkv": True, "dropout": c.attn_pdrop,
                "scale": None if c.scale_attn_weights else 1.0,
            },
            "ffn": {
                "type": "mlp", "hidden": c.n_inner or 4 * d_model, "bias": True,
                "activation": activation(c, "activation_function"), "dropout": 0.0,
            },
            "dropout": c.resid_pdrop,
        },
        "layers": layers,
        "init_std": c.initializer_range,
    }  # fmt: skip


def gpt2_sizes(c: ConfigView) -> dict[str, Any]:
    """The spec's ``arch`` and sizes of a config with GPT-2's names (GPT-2, GPT-J)."""
    return {"arch": "decoder", "vocab_size": c.vocab_size, "max_seq_len": c.n_positions,
            "d_model": c.n_embd, "n_layers": c.n_layer, "n_heads": c.n_head}  # fmt: skip


def gpt2_config(s: Any) -> dict[str, Any]:
    """The config fields, with GPT-2's names (GPT-2, GPT-J), of a spec's sizes, ffn,
    dropouts, norm and init std."""
    block = s.block
    return {
        "vocab_size": s.vocab_size,
        "n_positions": s.max_seq_len,
        "n_embd": s.d_model,
        "n_layer": s.n_layers,
        "n_head": s.n_heads,
        "n_inner": ffn_hidden(block.ffn, s.d_model),
        "activation_function": hf_activation(getattr(block.ffn, "activation", None), "gelu_new"),
        "resid_pdrop": block.dropout,
        "embd_pdrop": s.embedding.dropout,
        "attn_pdrop": block.attention.dropout,
        "layer_norm_epsilon": getattr(block.norm, "eps", 1e-5),
        "initializer_range": s.init_std,
    }


def config(s: Any) -> dict[str, Any]:
    """GPT2Config fields of a spec (checked by converting back)."""
    first = s.block_for(0).attention.scale
    second = s.block_for(1).attention.scale if s.n_layers > 1 else None
    by_layer = first is not None and second is not None and second == first / 2.0
    return {
        **gpt2_config(s),
        "scale_attn_weights": first != 1.0,
        "scale_attn_by_inverse_layer_idx": by_layer,
    }


GPT2 = HFFamily(
    name="gpt2",
    arch="decoder",
    model_type="gpt2",
    config_class="GPT2Config",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("GPT2Model", None),
        lm_head("GPT2LMHeadModel"),
    ),
    ignored={
        name: "read only by GPT2DoubleHeadsModel's multiple-choice head"
        for name in (
            "summary_type",
            "summary_use_proj",
            "summary_activation",
            "summary_proj_to_labels",
            "summary_first_dropout",
        )
    },
)
