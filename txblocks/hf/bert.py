"""BERT and RoBERTa <-> a post-norm encoder with segment embeddings and an embedding norm.

BERT's ``attention.output.LayerNorm`` is ``norm1`` (after the attention residual) and
``output.LayerNorm`` is ``norm2`` (after the ffn residual); q, k and v are fused into
``qkv``. RoBERTa is the same network whose positions start at ``pad_token_id + 1``:
``position: {type: learned, offset: pad_token_id + 1}``, its table copied whole.
(RoBERTa gives padding tokens position ``pad_token_id`` and counts only real tokens;
for right-padded batches the positions of real tokens are the same.)

``BertModel``'s pooler has no txblocks counterpart in a head-less model: ``from_hf``
skips it and ``to_hf`` builds ``BertModel(add_pooling_layer=False)``.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["BERT", "ROBERTA"]

WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.tokens.weight"),
    Rule("embeddings.position_embeddings.weight", "position.embedding.weight"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_types.weight"),
    Rule("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
    Rule(
        (
            "encoder.layer.{i}.attention.self.query.{p}",
            "encoder.layer.{i}.attention.self.key.{p}",
            "encoder.layer.{i}.attention.self.value.{p}",
        ),
        "blocks.{i}.attention.qkv.{p}",
        "concat",
    ),
    Rule("encoder.layer.{i}.attention.output.dense.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.{p}", "blocks.{i}.norm1.{p}"),
    Rule("encoder.layer.{i}.intermediate.dense.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("encoder.layer.{i}.output.dense.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("encoder.layer.{i}.output.LayerNorm.{p}", "blocks.{i}.norm2.{p}"),
)


def _offset(c: ConfigView, roberta: bool) -> int:
    if not roberta:
        return 0
    pad = c.pad_token_id
    if not isinstance(pad, int) or pad < 0 or pad + 1 >= c.max_position_embeddings:
        c.unsupported("pad_token_id", "RoBERTa's positions start at pad_token_id + 1; need an int "
                      "below max_position_embeddings - 1")  # fmt: skip
        return 0
    return pad + 1


def encoder_block(c: ConfigView, eps: float) -> dict[str, Any]:
    """BERT's post-norm block (LayerNorms of ``eps``, biased attention and MLP), which ALBERT
    shares."""
    return {
        "layout": "post_norm",
        "norm": {"type": "layernorm", "eps": eps},
        "attention": {"mask": "none", "bias": True, "fused_qkv": True,
                      "dropout": c.attention_probs_dropout_prob},
        "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True, "dropout": 0.0,
                "activation": activation(c, "hidden_act")},
        "dropout": c.hidden_dropout_prob,
    }  # fmt: skip


def encoder_block_config(s: Any, tanh_name: str = "gelu_pytorch_tanh") -> dict[str, Any]:
    """The config fields of :func:`encoder_block` (and the token types and init std), the tanh
    GELU named ``tanh_name``."""
    block = s.block
    return {
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None), tanh_name),
        "hidden_dropout_prob": block.dropout,
        "attention_probs_dropout_prob": block.attention.dropout,
        "type_vocab_size": s.embedding.token_types,
        "layer_norm_eps": getattr(block.norm, "eps", 1e-12),
        "initializer_range": s.init_std,
    }


def _spec(c: ConfigView, *, roberta: bool) -> dict[str, Any]:
    if c.is_decoder:
        c.unsupported("is_decoder", "a causal BERT (BertLMHeadModel) is not mapped")
    if c.add_cross_attention:
        c.unsupported("add_cross_attention", "txblocks encoders have no cross-attention blocks")
    kind = c.get("position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        c.unsupported(
            "position_embedding_type",
            "only absolute positions are mapped (relative_key / relative_key_query are not in "
            "txblocks, and transformers 5 ignores the option)",
        )
    if c.type_vocab_size < 1:
        c.unsupported(
            "type_vocab_size", "HF's BERT always adds a token-type embedding; need 1 or more"
        )
    eps = c.layer_norm_eps
    offset = _offset(c, roberta)
    return {
        "arch": "encoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings - offset,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "position": {"type": "learned", "offset": offset},
        "embedding": {
            "token_types": c.type_vocab_size,
            "norm": {"type": "layernorm", "eps": eps},
            "dropout": c.hidden_dropout_prob,
        },
        "block": encoder_block(c, eps),
        "final_norm": False,
        "init_std": c.initializer_range,
    }  # fmt: skip


def _config(s: Any, *, roberta: bool) -> dict[str, Any]:
    offset = getattr(s.position, "offset", 0)
    out = {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len + offset,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        **encoder_block_config(s),
    }
    if roberta:
        out["pad_token_id"] = offset - 1
    return out


def _classifier_dropout(c: ConfigView) -> float:
    dropout = c.classifier_dropout
    return c.hidden_dropout_prob if dropout is None else dropout


def _mlm(c: ConfigView, act: str) -> dict[str, Any]:
    return {
        "type": "mlm", "activation": act, "norm": {"type": "layernorm", "eps": c.layer_norm_eps},
        "tie_embeddings": c.tie_word_embeddings, "bias": True,
    }  # fmt: skip


def _heads(prefix: str, mlm_head: HFHead, roberta: bool) -> tuple[HFHead, ...]:
    name = "Roberta" if roberta else "Bert"
    token = HFHead(
        f"{name}ForTokenClassification", "token_classifier",
        spec=lambda c: {"type": "token_classifier", "n_classes": c.num_labels,
                        "dropout": _classifier_dropout(c)},
        config=lambda h: {"num_labels": h["n_classes"], "classifier_dropout": h["dropout"]},
        weights=(Rule("classifier.{p}", "head.out.{p}"),),
    )  # fmt: skip
    heads = [
        HFHead(f"{name}Model", None, ignore=("pooler.",), init_kwargs={"add_pooling_layer": False}),
        mlm_head,
        token,
    ]
    if not roberta:  # RoBERTa's classification head has a dropout before its dense layer
        heads.append(HFHead(
            "BertForSequenceClassification", "classifier",
            spec=lambda c: {"type": "classifier", "n_classes": c.num_labels, "pooling": "cls",
                            "pooler": True, "dropout": _classifier_dropout(c)},
            config=lambda h: {"num_labels": h["n_classes"], "classifier_dropout": h["dropout"]},
            weights=(Rule(f"{prefix}pooler.dense.{{p}}", "head.pooler.0.{p}"),
                     Rule("classifier.{p}", "head.out.{p}")),
        ))  # fmt: skip
    return tuple(heads)


def _mlm_config(head: dict[str, Any]) -> dict[str, Any]:
    return {"tie_word_embeddings": head["tie_embeddings"]}


_IGNORED = {"classifier_dropout": "read only by the classification heads (which map it)"}

BERT = HFFamily(
    name="bert",
    arch="encoder",
    model_type="bert",
    config_class="BertConfig",
    spec=lambda c: _spec(c, roberta=False),
    config=lambda s: _config(s, roberta=False),
    weights=WEIGHTS,
    ignored=_IGNORED,
    heads=_heads(
        "bert.",
        HFHead(
            "BertForMaskedLM",
            "mlm",
            spec=lambda c: _mlm(c, activation(c, "hidden_act")),
            config=_mlm_config,
            weights=(
                Rule("cls.predictions.transform.dense.{p}", "head.dense.{p}"),
                Rule("cls.predictions.transform.LayerNorm.{p}", "head.norm.{p}"),
                Rule("cls.predictions.decoder.weight", "head.decoder.proj.weight"),
                Rule(
                    ("cls.predictions.decoder.bias", "cls.predictions.bias"),
                    "head.decoder.proj.bias",
                    "alias",
                ),
            ),
        ),
        roberta=False,
    ),
)

ROBERTA = HFFamily(
    name="roberta",
    arch="encoder",
    model_type="roberta",
    config_class="RobertaConfig",
    spec=lambda c: _spec(c, roberta=True),
    config=lambda s: _config(s, roberta=True),
    weights=WEIGHTS,
    ignored=_IGNORED,
    heads=_heads(
        "roberta.",
        HFHead(
            "RobertaForMaskedLM",
            "mlm",
            spec=lambda c: _mlm(c, "gelu"),  # RobertaLMHead always uses exact GELU
            config=_mlm_config,
            weights=(
                Rule("lm_head.dense.{p}", "head.dense.{p}"),
                Rule("lm_head.layer_norm.{p}", "head.norm.{p}"),
                Rule("lm_head.decoder.weight", "head.decoder.proj.weight"),
                Rule(("lm_head.decoder.bias", "lm_head.bias"), "head.decoder.proj.bias", "alias"),
            ),
        ),
        roberta=True,
    ),
)
