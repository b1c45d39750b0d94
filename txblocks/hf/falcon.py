"""Falcon (``FalconModel``, ``FalconForCausalLM``) <-> a parallel (or pre-norm) decoder with RoPE.

Falcon's layouts, all with RoPE on whole heads and one ``bias`` flag for every linear layer:

* the 7B layout (``new_decoder_architecture: false``, ``parallel_attn``, ``multi_query``):
  ``x + attn(ln(x)) + mlp(ln(x))`` with one ``input_layernorm`` (``parallel`` with
  ``shared_norm: true``) and one key/value head;
* ``new_decoder_architecture``: parallel, ``num_kv_heads`` key/value heads, two norms
  ``ln_attn`` / ``ln_mlp`` (``num_ln_in_parallel_attn: 2``, the default) or one shared
  ``input_layernorm`` (``1``);
* ``parallel_attn: false``: pre-norm (``input_layernorm``, ``post_attention_layernorm``).

``query_key_value`` is grouped per key/value head (rows ``(Hkv, H / Hkv + 2, D)``; the
multi-query layout is the case ``Hkv = 1``, the old layout without multi-query ``Hkv = H``):
:class:`~txblocks.hf.gpt_neox.GroupedQKV`. Norm rules are alternatives by name: the first
whose HF parameters exist is used.

``to_hf`` gives the 7B layout for one shared norm and one key/value head, the new
architecture with one norm for a shared norm and more key/value heads, and the new
architecture with two norms for two. ALiBi Falcons (RW) are refused.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import config_sizes, decoder_sizes, qkv_bias
from txblocks.hf.family import ConfigView, activation, causal_lm_family, ffn_hidden, hf_activation
from txblocks.hf.gpt_neox import GroupedQKV
from txblocks.hf.llama import rope, rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["FALCON"]

WEIGHTS = (
    Rule("word_embeddings.weight", "embeddings.tokens.weight"),
    # norms, by layout: the first rule whose HF names exist applies
    Rule("h.{i}.ln_attn.{p}", "blocks.{i}.norm1.{p}"),  # new architecture, two norms
    Rule("h.{i}.input_layernorm.{p}", "blocks.{i}.norm1.{p}"),
    Rule("h.{i}.ln_mlp.{p}", "blocks.{i}.norm2.{p}"),
    Rule("h.{i}.post_attention_layernorm.{p}", "blocks.{i}.norm2.{p}"),  # parallel_attn: false
    Rule("h.{i}.self_attention.query_key_value.{p}", "blocks.{i}.attention.qkv.{p}",
         GroupedQKV()),
    Rule("h.{i}.self_attention.dense.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("h.{i}.mlp.dense_h_to_4h.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("h.{i}.mlp.dense_4h_to_h.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("ln_f.{p}", "final_norm.{p}"),
)  # fmt: skip


def _layout(c: ConfigView, n_heads: int) -> tuple[str, int, bool]:
    """The block layout, the key/value heads and whether one norm feeds both branches;
    problems for layouts HF cannot run."""
    parallel, n_ln, kv = bool(c.parallel_attn), c.num_ln_in_parallel_attn, c.num_kv_heads
    multi_query = bool(c.multi_query)
    if c.new_decoder_architecture:  # multi_query is ignored
        if not parallel:
            c.unsupported("parallel_attn", "False with new_decoder_architecture: HF's layer "
                          "then builds norms its forward does not use (it fails)")
        if n_ln not in (None, 1, 2):
            c.unsupported("num_ln_in_parallel_attn", "HF's new architecture has 1 or 2 norms")
        return "parallel", kv, n_ln == 1
    if parallel and n_ln == 2:
        c.unsupported("num_ln_in_parallel_attn", "2 without new_decoder_architecture: HF builds "
                      "ln_attn / ln_mlp but runs input_layernorm (it fails)")
    if not multi_query and kv != n_heads:
        c.unsupported("num_kv_heads", "HF's layout without multi_query or "
                      "new_decoder_architecture has num_attention_heads key/value heads")
    if not parallel and c.attention_dropout != c.hidden_dropout:
        c.unsupported("attention_dropout", (
            f"≠ hidden_dropout {c.hidden_dropout!r}: without parallel_attn HF drops the "
            "attention branch with attention_dropout and the mlp branch with hidden_dropout; "
            "txblocks has one residual dropout"
        ))  # fmt: skip
    return ("parallel" if parallel else "pre_norm"), (1 if multi_query else n_heads), parallel


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a FalconConfig (without head)."""
    if c.alibi:
        c.unsupported("alibi", "Falcon's ALiBi (slopes rounded to bfloat16, added before the "
                      "1/sqrt(head_dim) scale) is not txblocks' alibi; only rotary Falcons convert")
    n_heads = c.num_attention_heads
    layout, kv, shared_norm = _layout(c, n_heads)
    c.get("attention_dropout")  # no dropout on the rotary path's probabilities
    return {
        **decoder_sizes(c),
        "n_kv_heads": kv,
        "position": rope(c),
        "block": {
            "layout": layout,
            "shared_norm": shared_norm,
            "norm": {"type": "layernorm", "eps": c.layer_norm_epsilon},
            "attention": {"mask": "causal", "bias": bool(c.bias), "fused_qkv": True,
                          "dropout": 0.0},
            "ffn": {"type": "mlp", "hidden": c.ffn_hidden_size, "bias": bool(c.bias),
                    "activation": activation(c, "activation"), "dropout": 0.0},
            "dropout": c.hidden_dropout or 0.0,
        },
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """FalconConfig fields of a spec (checked by converting back)."""
    block = s.block
    parallel, kv, shared = block.layout == "parallel", s.kv_heads, block.shared_norm
    new = parallel and (kv > 1 or not shared)  # the 7B layout: one shared norm, one kv head
    return {
        **config_sizes(s, "num_kv_heads"),
        "new_decoder_architecture": new,
        "multi_query": kv == 1,
        "parallel_attn": parallel,
        "num_ln_in_parallel_attn": (1 if shared else 2) if new else None,
        "alibi": False,
        "bias": qkv_bias(s),
        "layer_norm_epsilon": getattr(block.norm, "eps", 1e-5),
        "hidden_dropout": block.dropout,
        "attention_dropout": 0.0 if parallel else block.dropout,
        "rope_parameters": rope_parameters(s.position),
        "ffn_hidden_size": ffn_hidden(block.ffn, s.d_model),
        "activation": hf_activation(getattr(block.ffn, "activation", None)),
        "initializer_range": s.init_std,
    }


FALCON = causal_lm_family("falcon", "Falcon", spec, config, WEIGHTS)
