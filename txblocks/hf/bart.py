"""BART (``BartModel``, ``BartForConditionalGeneration``) <-> a post-norm encoder–decoder
with learned positions and an embedding norm per stack.

BART (Lewis et al. 2020): each stack reads rows ``2 + position`` of its own
``embed_positions`` (``position: {type: learned, offset: 2}``), scales the token embeddings
by ``sqrt(d_model)`` when ``scale_embedding`` (``embedding.scale: sqrt_d_model``), adds the
positions, then ``layernorm_embedding`` (``embedding.norm``). Blocks are post-norm:
``self_attn_layer_norm`` / ``encoder_attn_layer_norm`` / ``final_layer_norm`` are
``norm1`` / ``norm_cross`` / ``norm2``; ``encoder_attn`` is the decoder's
``cross_attention`` (separate q, k, v, out). There is no norm after the last block.

``BartForConditionalGeneration`` adds the buffer ``final_logits_bias`` (1, V) to the
logits: ``head.proj.bias`` (``bias: true``). ``tie_word_embeddings`` ties both stacks'
token tables and the LM head to ``shared`` (``shared_embeddings`` and
``head.tie_embeddings``); untied, ``shared`` is not used by the forward and ``to_hf``
writes the encoder's table to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["BART"]

_NORM_EPS = 1e-5  # BART's nn.LayerNorm default; the config has no option for it


class _Row:
    """A (1, N) HF buffer <-> a (N,) txblocks bias (``final_logits_bias``)."""

    arity = 1

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return tensors[0].reshape(-1)

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [tensor.reshape(like[0].shape)]


def _layers(stack: str) -> tuple[Rule, ...]:
    hf, tx = f"{stack}.layers.{{i}}", f"{stack}.blocks.{{i}}"
    qkv = tuple(f"{hf}.self_attn.{x}_proj.{{p}}" for x in "qkv")
    rules = [
        Rule(qkv, f"{tx}.attention.qkv.{{p}}", "concat"),
        Rule(f"{hf}.self_attn.out_proj.{{p}}", f"{tx}.attention.out.{{p}}"),
        Rule(f"{hf}.self_attn_layer_norm.{{p}}", f"{tx}.norm1.{{p}}"),
        Rule(f"{hf}.fc1.{{p}}", f"{tx}.ffn.up.{{p}}"),
        Rule(f"{hf}.fc2.{{p}}", f"{tx}.ffn.down.{{p}}"),
        Rule(f"{hf}.final_layer_norm.{{p}}", f"{tx}.norm2.{{p}}"),
    ]
    if stack == "decoder":
        rules += [
            Rule(f"{hf}.encoder_attn.{a}_proj.{{p}}", f"{tx}.cross_attention.{b}.{{p}}")
            for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "out"))
        ]
        rules.append(Rule(f"{hf}.encoder_attn_layer_norm.{{p}}", f"{tx}.norm_cross.{{p}}"))
    return tuple(rules)


WEIGHTS = (
    # tied: one tensor under all three names; untied: `shared` is unused by the forward
    Rule(("encoder.embed_tokens.weight", "shared.weight"), "encoder.embeddings.tokens.weight",
         "alias"),
    Rule("decoder.embed_tokens.weight", "decoder.embeddings.tokens.weight"),
    Rule("{s}.embed_positions.weight", "{s}.position.embedding.weight"),
    Rule("{s}.layernorm_embedding.{p}", "{s}.embeddings.norm.{p}"),
    *_layers("encoder"),
    *_layers("decoder"),
)  # fmt: skip


def _ffn(c: ConfigView, hidden: int) -> dict[str, Any]:
    return {"type": "mlp", "hidden": hidden, "activation": activation(c, "activation_function"),
            "bias": True, "dropout": c.activation_dropout}  # fmt: skip


def check_stacks(c: ConfigView) -> None:
    """Problems of a BART-style config with what one txblocks seq2seq model cannot hold: two
    head counts, LayerDrop."""
    if c.encoder_attention_heads != c.decoder_attention_heads:
        c.unsupported("decoder_attention_heads", (
            f"differs from encoder_attention_heads ({c.encoder_attention_heads}); a txblocks "
            "seq2seq model has one n_heads"))  # fmt: skip
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        if c.get(key):
            c.unsupported(key, "txblocks has no LayerDrop (it skips layers in training only); "
                          "set it to 0 to convert")  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a BartConfig (without head)."""
    check_stacks(c)
    layers = []
    if c.decoder_ffn_dim != c.encoder_ffn_dim:
        layers.append({"stack": "decoder", "select": "all", "ffn": _ffn(c, c.decoder_ffn_dim)})
    norm = {"type": "layernorm", "eps": _NORM_EPS}
    return {
        "arch": "seq2seq",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.d_model,
        "n_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "n_heads": c.encoder_attention_heads,
        "position": {"type": "learned", "offset": 2},
        "embedding": {"scale": "sqrt_d_model" if c.scale_embedding else None, "norm": norm,
                      "dropout": c.dropout},
        "shared_embeddings": bool(c.tie_word_embeddings),
        "block": {
            "layout": "post_norm",
            "norm": norm,
            "attention": {"bias": True, "fused_qkv": True, "dropout": c.attention_dropout},
            "ffn": _ffn(c, c.encoder_ffn_dim),
            "dropout": c.dropout,
        },
        "layers": layers,
        "final_norm": False,
        "init_std": c.init_std,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """BartConfig fields of a spec (checked by converting back)."""
    block = s.block
    decoder_ffn = s.block_for(0, "decoder").ffn
    scale = s.embedding.scale
    return {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "d_model": s.d_model,
        "encoder_layers": s.stacks["encoder"],
        "decoder_layers": s.stacks["decoder"],
        "encoder_attention_heads": s.n_heads,
        "decoder_attention_heads": s.n_heads,
        "encoder_ffn_dim": ffn_hidden(block.ffn, s.d_model),
        "decoder_ffn_dim": ffn_hidden(decoder_ffn, s.d_model),
        "activation_function": hf_activation(getattr(block.ffn, "activation", None), "gelu_new"),
        "activation_dropout": getattr(block.ffn, "dropout", 0.0),
        "dropout": block.dropout,
        "attention_dropout": block.attention.dropout,
        "scale_embedding": scale is not None,
        "tie_word_embeddings": s.shared_embeddings,
        "init_std": s.init_std,
    }


BART = HFFamily(
    name="bart",
    arch="seq2seq",
    model_type="bart",
    config_class="BartConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("BartModel", None),
        HFHead(
            "BartForConditionalGeneration", "lm",
            spec=lambda c: {"type": "lm", "tie_embeddings": bool(c.tie_word_embeddings),
                            "bias": True, "scale": None},
            config=lambda head: {},
            weights=(Rule("lm_head.weight", "head.proj.weight"),
                     Rule("final_logits_bias", "head.proj.bias", _Row())),
        ),
    ),
    ignored={
        "forced_eos_token_id": "a generation setting",
        "forced_bos_token_id": "a generation setting",
        "classifier_dropout": "read only by BartForSequenceClassification",
        "is_decoder": "read only by BartForCausalLM",
        "num_labels": "read only by BartForSequenceClassification",
    },
)  # fmt: skip
