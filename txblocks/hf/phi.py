"""Phi (``PhiModel``, ``PhiForCausalLM``) <-> a parallel decoder with partial RoPE and GQA.

A Phi block is ``x + attn(ln(x)) + mlp(ln(x))``: txblocks' ``parallel`` layout with one
shared norm (``shared_norm: true``), ``input_layernorm``. RoPE
rotates the first ``partial_rotary_factor`` of each head (halves paired); ``q_proj``,
``k_proj``, ``v_proj`` (biased, GQA) are fused into ``qkv``; ``qk_layernorm`` is a
LayerNorm over each head of q and k before the rotation (``attention.qk_norm``). The LM
head has a bias.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.gpt_neox import partial_rope, partial_rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["PHI"]

WEIGHTS = (
    Rule("embed_tokens.weight", "embeddings.tokens.weight"),
    Rule("layers.{i}.input_layernorm.{p}", "blocks.{i}.norm1.{p}"),
    Rule(("layers.{i}.self_attn.q_proj.{p}", "layers.{i}.self_attn.k_proj.{p}",
          "layers.{i}.self_attn.v_proj.{p}"), "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule("layers.{i}.self_attn.dense.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("layers.{i}.self_attn.q_layernorm.{p}", "blocks.{i}.attention.q_norm.{p}"),
    Rule("layers.{i}.self_attn.k_layernorm.{p}", "blocks.{i}.attention.k_norm.{p}"),
    Rule("layers.{i}.mlp.fc1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("layers.{i}.mlp.fc2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("final_layernorm.{p}", "final_norm.{p}"),
)  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a PhiConfig (without head)."""
    d_model, n_heads = c.hidden_size, c.num_attention_heads
    head_dim = c.get("head_dim") or d_model // n_heads
    norm = {"type": "layernorm", "eps": c.layer_norm_eps}
    return {
        "arch": "decoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": d_model,
        "n_layers": c.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": c.num_key_value_heads or n_heads,
        "head_dim": head_dim,
        "position": partial_rope(c, head_dim),
        "embedding": {"dropout": c.embd_pdrop},
        "block": {
            "layout": "parallel",
            "shared_norm": True,
            "norm": norm,
            "attention": {"mask": "causal", "bias": True, "fused_qkv": True,
                          "qk_norm": norm if c.qk_layernorm else None,
                          "dropout": c.attention_dropout or 0.0},
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True,
                    "activation": activation(c, "hidden_act"), "dropout": 0.0},
            "dropout": c.resid_pdrop,
        },
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """PhiConfig fields of a spec (checked by converting back)."""
    block = s.block
    return {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.kv_heads,
        "rope_parameters": partial_rope_parameters(s.position),
        "layer_norm_eps": getattr(block.norm, "eps", 1e-5),
        "qk_layernorm": block.attention.qk_norm is not None,
        "attention_dropout": block.attention.dropout,
        "resid_pdrop": block.dropout,
        "embd_pdrop": s.embedding.dropout,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None), "gelu_new"),
        "initializer_range": s.init_std,
    }


PHI = HFFamily(
    name="phi",
    arch="decoder",
    model_type="phi",
    config_class="PhiConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("PhiModel", None),
        HFHead(
            "PhiForCausalLM",
            "lm",
            spec=lambda c: {"type": "lm", "tie_embeddings": c.tie_word_embeddings, "bias": True},
            config=lambda head: {"tie_word_embeddings": head["tie_embeddings"]},
            weights=(Rule("lm_head.{p}", "head.proj.{p}"),),
        ),
    ),
)
