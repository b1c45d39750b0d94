"""StableLM (``StableLmModel``, ``StableLmForCausalLM``) <-> a pre-norm LayerNorm decoder
with partial RoPE and SwiGLU.

StableLM (stablelm-3b-4e1t, StableLM 2 1.6B; Bellagente et al. 2024) is Llama's block
with biased LayerNorms (``layer_norm_eps``) instead of RMSNorms, and RoPE on the first
``int(head_dim · partial_rotary_factor)`` dims of each head only (``position.fraction``;
0.25 by default). ``use_qkv_bias`` sets the q, k, v biases; ``o_proj`` has none. q, k, v
are fused into ``qkv`` (rows q, k, v), ``gate_proj`` and ``up_proj`` into ``gate_up``.

``use_parallel_residual`` gives ``x + attn(ln(x)) + mlp(ln(x))``: the ``parallel`` layout
with one shared norm (``shared_norm: true``, ``input_layernorm``; HF then builds no
``post_attention_layernorm``).

Refused, each with its reason: ``qk_layernorm`` (one LayerNorm *per head*; txblocks'
``qk_norm`` is one norm shared by the heads), ``hidden_dropout`` (HF drops the ffn branch
only; txblocks' ``block.dropout`` drops both).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import EMBED_TOKENS, QKV, attention, decoder_config, glu, sizes
from txblocks.hf.decoder_common import qkv_bias
from txblocks.hf.family import ConfigView
from txblocks.hf.llama import _family
from txblocks.hf.phi3 import partial_rope, partial_rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["STABLELM"]

WEIGHTS = (
    EMBED_TOKENS,
    QKV,
    Rule("layers.{i}.self_attn.o_proj.weight", "blocks.{i}.attention.out.weight"),
    Rule(
        ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight"),
        "blocks.{i}.ffn.gate_up.weight",
        "concat",
    ),
    Rule("layers.{i}.mlp.down_proj.weight", "blocks.{i}.ffn.down.weight"),
    Rule("layers.{i}.input_layernorm.{p}", "blocks.{i}.norm1.{p}"),
    Rule("layers.{i}.post_attention_layernorm.{p}", "blocks.{i}.norm2.{p}"),
    Rule("norm.{p}", "final_norm.{p}"),
)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a StableLmConfig (without head)."""
    if c.qk_layernorm:
        c.unsupported("qk_layernorm", "HF normalizes each head with its own LayerNorm; "
                      "txblocks' attention.qk_norm is one norm shared by all heads")
    if c.hidden_dropout:
        c.unsupported("hidden_dropout", "HF drops the ffn branch only; txblocks' block.dropout "
                      "drops both branches. It acts in training only: set it to 0 to convert")
    position = partial_rope(c, c.hidden_size // c.num_attention_heads)
    return {
        # StableLM ignores a head_dim
        **sizes(c, n_kv_heads=c.num_key_value_heads,
                head_dim=c.hidden_size // c.num_attention_heads),
        "position": position,
        "block": {
            "layout": "parallel" if c.use_parallel_residual else "pre_norm",
            "shared_norm": bool(c.use_parallel_residual),
            "norm": {"type": "layernorm", "eps": c.layer_norm_eps, "bias": True, "affine": True},
            "attention": attention(c, "causal", qkv_bias=bool(c.use_qkv_bias), out_bias=False),
            "ffn": glu(c),
            "dropout": 0.0,
        },
        "embedding": {"dropout": 0.0},
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """StableLmConfig fields of a spec (checked by converting back)."""
    return {
        **decoder_config(s),
        "rope_parameters": partial_rope_parameters(s.position),
        "layer_norm_eps": getattr(s.block.norm, "eps", 1e-5),
        "use_qkv_bias": qkv_bias(s),
        "use_parallel_residual": s.block.layout == "parallel",
    }


STABLELM = _family("stablelm", "StableLm", spec, config, weights=WEIGHTS, ignored={})
