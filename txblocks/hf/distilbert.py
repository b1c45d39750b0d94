"""DistilBERT (``DistilBertModel``, ``...ForMaskedLM``, ``...ForTokenClassification``) <->
a post-norm encoder with learned positions and an embedding norm, no segment embeddings.

DistilBERT (Sanh et al. 2019) is BERT with half the layers, no token types and no pooler:
``q_lin`` / ``k_lin`` / ``v_lin`` are fused into ``qkv``, ``out_lin`` is ``attention.out``,
``sa_layer_norm`` / ``output_layer_norm`` are ``norm1`` / ``norm2`` (post-norm), ``lin1`` /
``lin2`` the ``mlp``. Every LayerNorm has eps 1e-12 (fixed in the HF code). The position
table is a trainable ``nn.Embedding`` in HF, whatever ``sinusoidal_pos_embds`` says (that
flag only fills it with the interleaved sinusoid at initialisation): it is copied as a
``learned`` table.

The MLM head is ``vocab_transform`` (dense), ``activation``, ``vocab_layer_norm`` and
``vocab_projector`` (tied to the token table when ``tie_word_embeddings``): txblocks'
``mlm`` head. Training-only difference: HF applies ``dropout`` after the ffn but not after
the attention output; txblocks' ``block.dropout`` acts on both residual branches.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["DISTILBERT"]

_EPS = 1e-12  # every DistilBERT LayerNorm; the config has no option for it

WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.tokens.weight"),
    Rule("embeddings.position_embeddings.weight", "position.embedding.weight"),
    Rule("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
    Rule(tuple(f"transformer.layer.{{i}}.attention.{x}_lin.{{p}}" for x in "qkv"),
         "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule("transformer.layer.{i}.attention.out_lin.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("transformer.layer.{i}.sa_layer_norm.{p}", "blocks.{i}.norm1.{p}"),
    Rule("transformer.layer.{i}.ffn.lin1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("transformer.layer.{i}.ffn.lin2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("transformer.layer.{i}.output_layer_norm.{p}", "blocks.{i}.norm2.{p}"),
)  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a DistilBertConfig (without head)."""
    norm = {"type": "layernorm", "eps": _EPS}
    return {
        "arch": "encoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.dim,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "position": {"type": "learned", "offset": 0},
        "embedding": {"token_types": 0, "norm": norm, "dropout": c.dropout},
        "block": {
            "layout": "post_norm",
            "norm": norm,
            "attention": {"mask": "none", "bias": True, "fused_qkv": True,
                          "dropout": c.attention_dropout},
            "ffn": {"type": "mlp", "hidden": c.hidden_dim, "bias": True, "dropout": 0.0,
                    "activation": activation(c, "activation")},
            "dropout": c.dropout,
        },
        "final_norm": False,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """DistilBertConfig fields of a spec (checked by converting back)."""
    block = s.block
    return {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "dim": s.d_model,
        "n_layers": s.n_layers,
        "n_heads": s.n_heads,
        "hidden_dim": ffn_hidden(block.ffn, s.d_model),
        "activation": hf_activation(getattr(block.ffn, "activation", None)),
        "dropout": block.dropout,
        "attention_dropout": block.attention.dropout,
        "initializer_range": s.init_std,
    }


def _mlm(c: ConfigView) -> dict[str, Any]:
    return {"type": "mlm", "activation": activation(c, "activation"),
            "norm": {"type": "layernorm", "eps": _EPS},
            "tie_embeddings": bool(c.tie_word_embeddings), "bias": True}  # fmt: skip


DISTILBERT = HFFamily(
    name="distilbert",
    arch="encoder",
    model_type="distilbert",
    config_class="DistilBertConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("DistilBertModel", None),
        HFHead(
            "DistilBertForMaskedLM", "mlm", spec=_mlm,
            config=lambda h: {"tie_word_embeddings": h["tie_embeddings"]},
            weights=(Rule("vocab_transform.{p}", "head.dense.{p}"),
                     Rule("vocab_layer_norm.{p}", "head.norm.{p}"),
                     Rule("vocab_projector.{p}", "head.decoder.proj.{p}")),
        ),
        HFHead(
            "DistilBertForTokenClassification", "token_classifier",
            spec=lambda c: {"type": "token_classifier", "n_classes": c.num_labels,
                            "dropout": c.dropout},
            config=lambda h: {"num_labels": h["n_classes"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"),),
        ),
    ),
    ignored={
        "sinusoidal_pos_embds": "only initialises the position table, a trainable parameter "
                                "that is copied",
        "qa_dropout": "read only by DistilBertForQuestionAnswering",
        "seq_classif_dropout": "read only by DistilBertForSequenceClassification / "
                               "MultipleChoice",
    },
)  # fmt: skip
