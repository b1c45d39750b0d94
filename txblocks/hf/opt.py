"""OPT (``OPTModel``, ``OPTForCausalLM``) <-> a pre-norm decoder with learned positions (offset 2).

OPT's block is BART's attention and ffn in GPT-2's pre-norm order: separate ``q_proj``,
``k_proj``, ``v_proj`` (fused into ``qkv``), ``out_proj``, ``fc1`` / ``fc2``, biases
(``enable_bias``), LayerNorms with or without parameters
(``layer_norm_elementwise_affine``), a final norm unless ``_remove_final_layer_norm``.
Positions read row ``p + 2`` of ``embed_positions``, ``p`` counted from the attention mask
(left-padded rows start at 0: pass such ``position_ids`` to the txblocks model, whose
default is ``0..T-1``; its ``generate`` counts them from the mask too).

OPT-350m's two differences are spec fields: its token table is ``word_embed_proj_dim``
(512) wide, projected to ``hidden_size`` (1024) right after the lookup by ``project_in`` and
back after the last block by ``project_out`` (no biases; the output and the tied LM head
are 512 wide): ``embedding {width: word_embed_proj_dim, project_at: tokens, project_bias:
false, project_out: true}``; and its blocks are post-norm (``do_layer_norm_before: false``:
``layout: post_norm``, no final norm).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import config_sizes, decoder_sizes, qkv_bias
from txblocks.hf.family import ConfigView, activation, causal_lm_family, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["OPT"]

WEIGHTS = (
    Rule("decoder.embed_tokens.weight", "embeddings.tokens.weight"),
    Rule("decoder.embed_positions.weight", "position.embedding.weight"),
    Rule("decoder.layers.{i}.self_attn_layer_norm.{p}", "blocks.{i}.norm1.{p}"),
    Rule(("decoder.layers.{i}.self_attn.q_proj.{p}", "decoder.layers.{i}.self_attn.k_proj.{p}",
          "decoder.layers.{i}.self_attn.v_proj.{p}"), "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule("decoder.layers.{i}.self_attn.out_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("decoder.layers.{i}.final_layer_norm.{p}", "blocks.{i}.norm2.{p}"),
    Rule("decoder.layers.{i}.fc1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("decoder.layers.{i}.fc2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("decoder.final_layer_norm.{p}", "final_norm.{p}"),
    Rule("decoder.project_in.weight", "embeddings.project.weight"),
    Rule("decoder.project_out.weight", "project_out.weight"),
)  # fmt: skip

#: OPT's learned positions start at row 2 (fairseq's padding offset).
OFFSET = 2


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of an OPTConfig (without head)."""
    d_model = c.hidden_size
    embedding: dict[str, Any] = {"dropout": 0.0}
    if c.word_embed_proj_dim != d_model:  # OPT-350m's project_in / project_out
        embedding.update(width=c.word_embed_proj_dim, project_at="tokens", project_bias=False,
                         project_out=True)
    pre_norm = bool(c.do_layer_norm_before)  # False: OPT-350m's post-norm blocks
    remove_final = c.get("_remove_final_layer_norm", False)
    if c.layerdrop:
        c.unsupported("layerdrop", "txblocks does not skip layers in training; set it to 0")
    affine = bool(c.layer_norm_elementwise_affine)
    norm = {"type": "layernorm", "eps": 1e-5, "affine": affine, "bias": affine}
    bias = bool(c.enable_bias)
    return {
        **decoder_sizes(c),
        "position": {"type": "learned", "offset": OFFSET},
        "embedding": embedding,
        "block": {
            "layout": "pre_norm" if pre_norm else "post_norm",
            "norm": norm,
            "attention": {"mask": "causal", "bias": bias, "fused_qkv": True,
                          "dropout": c.attention_dropout},
            "ffn": {"type": "mlp", "hidden": c.ffn_dim, "bias": bias,
                    "activation": activation(c, "activation_function"), "dropout": 0.0},
            "dropout": c.dropout,
        },
        "final_norm": pre_norm and not remove_final,  # HF has none after post-norm blocks
        "init_std": c.init_std,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """OPTConfig fields of a spec (checked by converting back)."""
    block = s.block
    attention = block.attention
    return {
        **config_sizes(s, None),
        "word_embed_proj_dim": s.embedding.width or s.d_model,
        "do_layer_norm_before": block.layout != "post_norm",
        "ffn_dim": ffn_hidden(block.ffn, s.d_model),
        "activation_function": hf_activation(getattr(block.ffn, "activation", None), "gelu_new"),
        "enable_bias": qkv_bias(s),
        "layer_norm_elementwise_affine": bool(getattr(block.norm, "affine", True)),
        "_remove_final_layer_norm": block.layout != "post_norm" and not s.use_final_norm,
        "dropout": block.dropout,
        "attention_dropout": attention.dropout,
        "init_std": s.init_std,
    }


OPT = causal_lm_family("opt", "OPT", spec, config, WEIGHTS)
