"""XLM-RoBERTa (``XLMRobertaModel``, ``...ForMaskedLM``, ``...ForTokenClassification``) <->
RoBERTa's post-norm encoder.

XLM-R (Conneau et al. 2020) is RoBERTa's network under its own config class and
``model_type``: the same weights, positions that start at ``pad_token_id + 1``
(``position: {type: learned, offset: pad_token_id + 1}``) and an MLM head whose
activation is always the exact GELU (:mod:`txblocks.hf.bert`).
"""

from __future__ import annotations

from txblocks.hf.bert import (
    _IGNORED, WEIGHTS, _classifier_dropout, _config, _mlm, _mlm_config, _spec,
)  # fmt: skip
from txblocks.hf.family import HFFamily, HFHead
from txblocks.hf.rules import Rule

__all__ = ["XLM_ROBERTA"]

XLM_ROBERTA = HFFamily(
    name="xlm_roberta",
    arch="encoder",
    model_type="xlm-roberta",
    config_class="XLMRobertaConfig",
    spec=lambda c: _spec(c, roberta=True),
    config=lambda s: _config(s, roberta=True),
    weights=WEIGHTS,
    ignored=_IGNORED,
    heads=(
        HFHead("XLMRobertaModel", None, ignore=("pooler.",),
               init_kwargs={"add_pooling_layer": False}),
        HFHead(
            "XLMRobertaForMaskedLM", "mlm",
            spec=lambda c: _mlm(c, "gelu"),  # XLMRobertaLMHead always uses exact GELU
            config=_mlm_config,
            weights=(
                Rule("lm_head.dense.{p}", "head.dense.{p}"),
                Rule("lm_head.layer_norm.{p}", "head.norm.{p}"),
                Rule("lm_head.decoder.weight", "head.decoder.proj.weight"),
                Rule(("lm_head.decoder.bias", "lm_head.bias"), "head.decoder.proj.bias", "alias"),
            ),
        ),
        HFHead(
            "XLMRobertaForTokenClassification", "token_classifier",
            spec=lambda c: {"type": "token_classifier", "n_classes": c.num_labels,
                            "dropout": _classifier_dropout(c)},
            config=lambda h: {"num_labels": h["n_classes"], "classifier_dropout": h["dropout"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"),),
        ),
    ),
)  # fmt: skip
