"""GPT-Neo (``GPTNeoModel``, ``GPTNeoForCausalLM``) <-> a pre-norm decoder with learned positions.

GPT-Neo is GPT-2's block with separate ``q_proj``, ``k_proj``, ``v_proj`` (no bias; fused
into ``qkv``), a biased ``out_proj``, and attention scores that are never scaled
(``attention.scale: 1``). ``attention_types`` alternates ``global`` and ``local`` layers;
a local layer lets query ``i`` see keys ``i - window_size < j <= i``: txblocks'
``sliding_window`` mask with ``window: window_size``, as per-layer overrides.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, activation, causal_lm_family, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["GPT_NEO"]

WEIGHTS = (
    Rule("wte.weight", "embeddings.tokens.weight"),
    Rule("wpe.weight", "position.embedding.weight"),
    Rule("h.{i}.ln_1.{p}", "blocks.{i}.norm1.{p}"),
    Rule(("h.{i}.attn.attention.q_proj.weight", "h.{i}.attn.attention.k_proj.weight",
          "h.{i}.attn.attention.v_proj.weight"), "blocks.{i}.attention.qkv.weight", "concat"),
    Rule("h.{i}.attn.attention.out_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("h.{i}.ln_2.{p}", "blocks.{i}.norm2.{p}"),
    Rule("h.{i}.mlp.c_fc.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("h.{i}.mlp.c_proj.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("ln_f.{p}", "final_norm.{p}"),
)  # fmt: skip


def _local(window: int) -> dict[str, Any]:
    return {"type": "sliding_window", "window": window}


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a GPTNeoConfig (without head)."""
    c.get("attention_types")  # expanded into attention_layers
    kinds = list(c.attention_layers)
    for kind in sorted(set(kinds) - {"global", "local"}):
        c.unsupported("attention_types", f"attention type {kind!r}; supported: global, local")
    local = [i for i, kind in enumerate(kinds) if kind == "local"]
    window = c.window_size
    mask: Any = "causal"
    layers = []
    if local and len(local) == c.num_layers:
        mask = _local(window)
    elif local:
        layers = [{"select": local, "attention": {"mask": _local(window)}}]
    d_model = c.hidden_size
    return {
        "arch": "decoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": d_model,
        "n_layers": c.num_layers,
        "n_heads": c.num_heads,
        "position": {"type": "learned", "offset": 0},
        "embedding": {"dropout": c.embed_dropout},
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "layernorm", "eps": c.layer_norm_epsilon},
            "attention": {
                "mask": mask, "qkv_bias": False, "out_bias": True, "fused_qkv": True,
                "dropout": c.attention_dropout, "scale": 1.0,
            },
            "ffn": {
                "type": "mlp", "hidden": c.intermediate_size or 4 * d_model, "bias": True,
                "activation": activation(c, "activation_function"), "dropout": 0.0,
            },
            "dropout": c.resid_dropout,
        },
        "layers": layers,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """GPTNeoConfig fields of a spec (checked by converting back)."""
    block = s.block
    windows = [getattr(s.block_for(i).attention.mask, "window", None) for i in range(s.n_layers)]
    used = [w for w in windows if w is not None]
    kinds = ["global" if w is None else "local" for w in windows]
    return {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "hidden_size": s.d_model,
        "num_layers": s.n_layers,
        "num_heads": s.n_heads,
        "attention_types": [[kinds, 1]],
        "window_size": used[0] if used else 256,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "activation_function": hf_activation(getattr(block.ffn, "activation", None), "gelu_new"),
        "resid_dropout": block.dropout,
        "embed_dropout": s.embedding.dropout,
        "attention_dropout": block.attention.dropout,
        "layer_norm_epsilon": getattr(block.norm, "eps", 1e-5),
        "initializer_range": s.init_std,
    }


GPT_NEO = causal_lm_family(
    "gpt_neo", "GPTNeo", spec, config, WEIGHTS,
    ignored={"classifier_dropout": "read only by the classification heads"},
)
