"""ALBERT (``AlbertModel``, ``AlbertForMaskedLM``) <-> BERT's post-norm encoder with a
factorized embedding and one block shared by every layer.

ALBERT (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations", §3.1) differs from BERT in two places, both spec fields:

* factorized embeddings: the word, position and token-type tables, the embedding LayerNorm
  and its dropout are ``embedding_size`` wide, then ``encoder.embedding_hidden_mapping_in``
  (with a bias) maps them to ``hidden_size``: ``embedding {width: embedding_size,
  project_at: end}``. The MLM head's dense layer maps back to ``embedding_size``, its norm
  and the tied vocabulary projection read that width (txblocks' ``mlm`` head does so for a
  narrower table);
* cross-layer sharing: the ``num_hidden_layers`` layers run the blocks of
  ``num_hidden_groups`` groups, layer ``i`` the group ``i // (layers / groups)``:
  ``share_layers: {groups: num_hidden_groups}``. The released models have one group
  (``groups: 1``, one block for the stack, its parameters counted once).

The block is BERT's: ``attention.LayerNorm`` after the attention residual (``norm1``),
``full_layer_layer_norm`` after the ffn residual (``norm2``), ``ffn`` / ``ffn_output`` an
``mlp`` with ``hidden_act``. ``AlbertModel``'s pooler has no counterpart without a head: it
is skipped, and ``to_hf`` builds the class with ``add_pooling_layer=False``.

Refused: ``inner_group_num`` other than 1 (several different layers inside a group, applied
in turn), and a number of groups other than 1 or ``num_hidden_layers`` (the weight names of
the groups between cannot follow the layers that share them).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.bert import encoder_block, encoder_block_config
from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation
from txblocks.hf.rules import Rule

__all__ = ["ALBERT"]

_LAYER = "encoder.albert_layer_groups.{i}.albert_layers.0"

WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.tokens.weight"),
    Rule("embeddings.position_embeddings.weight", "position.embedding.weight"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_types.weight"),
    Rule("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
    Rule("encoder.embedding_hidden_mapping_in.{p}", "embeddings.project.{p}"),
    # with one group, the txblocks model's parameters are named after its first block only
    Rule(tuple(f"{_LAYER}.attention.{x}.{{p}}" for x in ("query", "key", "value")),
         "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule(f"{_LAYER}.attention.dense.{{p}}", "blocks.{i}.attention.out.{p}"),
    Rule(f"{_LAYER}.attention.LayerNorm.{{p}}", "blocks.{i}.norm1.{p}"),
    Rule(f"{_LAYER}.ffn.{{p}}", "blocks.{i}.ffn.up.{p}"),
    Rule(f"{_LAYER}.ffn_output.{{p}}", "blocks.{i}.ffn.down.{p}"),
    Rule(f"{_LAYER}.full_layer_layer_norm.{{p}}", "blocks.{i}.norm2.{p}"),
)  # fmt: skip


def _share(c: ConfigView) -> dict[str, Any] | None:
    """``share_layers`` of the groups (None: every layer its own group)."""
    layers, groups = c.num_hidden_layers, c.num_hidden_groups
    if c.inner_group_num != 1:
        c.unsupported("inner_group_num", "several different layers inside each group, run in "
                      "turn, are not mapped; txblocks shares runs of consecutive layers")
    if groups == layers:
        return None
    if groups != 1:
        c.unsupported("num_hidden_groups", f"groups other than 1 or num_hidden_layers "
                      f"({layers}) are not mapped (their weight names cannot follow the layers "
                      "that share them)")
    return {"groups": 1}


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of an AlbertConfig (without head)."""
    eps = c.layer_norm_eps
    return {
        "arch": "encoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "position": {"type": "learned", "offset": 0},
        "embedding": {
            "width": c.embedding_size, "project_at": "end", "project_bias": True,
            "token_types": c.type_vocab_size, "norm": {"type": "layernorm", "eps": eps},
            "dropout": c.hidden_dropout_prob,
        },
        "block": encoder_block(c, eps),
        "share_layers": _share(c),
        "final_norm": False,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """AlbertConfig fields of a spec (checked by converting back)."""
    share = s.share_layers
    return {
        "vocab_size": s.vocab_size,
        "embedding_size": s.embedding.width or s.d_model,
        "max_position_embeddings": s.max_seq_len,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_hidden_groups": share.groups if share is not None else s.n_layers,
        "inner_group_num": 1,
        "num_attention_heads": s.n_heads,
        **encoder_block_config(s, "gelu_new"),
    }


def _mlm(c: ConfigView) -> dict[str, Any]:
    return {"type": "mlm", "activation": activation(c, "hidden_act"),
            "norm": {"type": "layernorm", "eps": c.layer_norm_eps},
            "tie_embeddings": bool(c.tie_word_embeddings), "bias": True}  # fmt: skip


ALBERT = HFFamily(
    name="albert",
    arch="encoder",
    model_type="albert",
    config_class="AlbertConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("AlbertModel", None, ignore=("pooler.",), init_kwargs={"add_pooling_layer": False}),
        HFHead(
            "AlbertForMaskedLM", "mlm", spec=_mlm,
            config=lambda h: {"tie_word_embeddings": h["tie_embeddings"]},
            weights=(Rule("predictions.dense.{p}", "head.dense.{p}"),
                     Rule("predictions.LayerNorm.{p}", "head.norm.{p}"),
                     Rule("predictions.decoder.weight", "head.decoder.proj.weight"),
                     Rule(("predictions.decoder.bias", "predictions.bias"),
                          "head.decoder.proj.bias", "alias")),
        ),
    ),
    ignored={"classifier_dropout_prob": "read only by the classification heads (not mapped)"},
)  # fmt: skip
