"""ELECTRA (``ElectraModel``, ``...ForMaskedLM``, ``...ForTokenClassification``) <-> BERT's
post-norm encoder, with ELECTRA-small's narrower embeddings.

ELECTRA (Clark et al. 2020) keeps BERT's weight names under ``electra.``
(:mod:`txblocks.hf.bert`). Its embeddings are ``embedding_size`` wide; when that differs
from ``hidden_size`` (ELECTRA-small: 128 and 256), the word, position and token-type
tables, the embedding LayerNorm and its dropout are ``embedding_size`` wide and a linear
layer with a bias (``embeddings_project``) maps the result to ``hidden_size``:
``embedding {width: embedding_size}`` (``project_at: end``). The generator's MLM head
(``generator_predictions.dense`` / ``LayerNorm``, ``generator_lm_head``) is txblocks'
``mlm`` head with the exact GELU (fixed in HF, whatever ``hidden_act`` says); its dense layer
maps ``hidden_size`` to ``embedding_size``, as the ``mlm`` head does for a narrower table.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.bert import WEIGHTS as BERT_WEIGHTS
from txblocks.hf.bert import _classifier_dropout, _config, _spec
from txblocks.hf.family import ConfigView, HFFamily, HFHead
from txblocks.hf.rules import Rule

__all__ = ["ELECTRA"]


WEIGHTS = (*BERT_WEIGHTS, Rule("embeddings_project.{p}", "embeddings.project.{p}"))


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of an ElectraConfig (without head)."""
    data = _spec(c, roberta=False)
    if c.embedding_size != c.hidden_size:  # HF projects them: embeddings_project
        data["embedding"].update(width=c.embedding_size, project_at="end", project_bias=True)
    return data


def config(s: Any) -> dict[str, Any]:
    """ElectraConfig fields of a spec (checked by converting back)."""
    return {**_config(s, roberta=False), "embedding_size": s.embedding.width or s.d_model}


def _mlm(c: ConfigView) -> dict[str, Any]:
    return {"type": "mlm", "activation": "gelu",
            "norm": {"type": "layernorm", "eps": c.layer_norm_eps},
            "tie_embeddings": bool(c.tie_word_embeddings), "bias": True}  # fmt: skip


ELECTRA = HFFamily(
    name="electra",
    arch="encoder",
    model_type="electra",
    config_class="ElectraConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("ElectraModel", None),
        HFHead(
            "ElectraForMaskedLM", "mlm", spec=_mlm,
            config=lambda h: {"tie_word_embeddings": h["tie_embeddings"]},
            weights=(Rule("generator_predictions.dense.{p}", "head.dense.{p}"),
                     Rule("generator_predictions.LayerNorm.{p}", "head.norm.{p}"),
                     Rule("generator_lm_head.{p}", "head.decoder.proj.{p}")),
        ),
        HFHead(
            "ElectraForTokenClassification", "token_classifier",
            spec=lambda c: {"type": "token_classifier", "n_classes": c.num_labels,
                            "dropout": _classifier_dropout(c)},
            config=lambda h: {"num_labels": h["n_classes"], "classifier_dropout": h["dropout"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"),),
        ),
    ),
    ignored={
        "classifier_dropout": "read only by the classification heads (which map it)",
        **{k: "read only by ElectraForMultipleChoice's sequence summary"
           for k in ("summary_type", "summary_use_proj", "summary_activation",
                     "summary_last_dropout")},
    },
)  # fmt: skip
