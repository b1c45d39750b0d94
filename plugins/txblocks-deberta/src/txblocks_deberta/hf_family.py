"""DeBERTa-v2 (``DebertaV2Model``, ``...ForMaskedLM``, ``...ForTokenClassification``) <->
BERT's post-norm encoder with disentangled attention (``position: disentangled``).

DeBERTa-v2 and v3 (He et al. 2021; 2023) keep BERT's layer (``attention.output.LayerNorm``
after the attention residual is ``norm1``, ``output.LayerNorm`` after the ffn residual
``norm2``; ``query_proj`` / ``key_proj`` / ``value_proj`` fused into ``qkv``) and add:

* the relative attention of every layer: ``encoder.rel_embeddings`` (and
  ``encoder.LayerNorm`` with ``norm_rel_ebd: layer_norm``) are the scheme's table (and
  norm); ``position_buckets``, ``max_relative_positions`` (or ``max_position_embeddings``
  when below 1) and ``pos_att_type`` map to the scheme; with ``share_att_key: false`` each
  layer's ``pos_key_proj`` / ``pos_query_proj`` are the scheme's per-layer projections;
* the score scale ``(D · (1 + len(pos_att_type))) ** -0.5``: ``block.attention.scale`` (HF
  scales by it even without ``relative_attention``);
* ``embedding_size`` ≠ ``hidden_size``: ``embed_proj`` (no bias) right after the word table,
  before the embedding LayerNorm: ``embedding {width, project_at: tokens,
  project_bias: false}``.

``position_biased_input`` without ``relative_attention`` is BERT's ``learned`` positions;
with it, or neither, the model has ``disentangled`` or ``none``. HF multiplies the embeddings
by the attention mask and masks the padded query rows too: neither changes the real
positions' numbers. The MLM head is BERT's (legacy ``cls.predictions``, or ``legacy: false``'s
``lm_predictions.lm_head``, always tied to the word table); ``to_hf`` writes the legacy one.

Refused, naming the option: ``conv_kernel_size`` > 0 (the convolution after the first layer),
``relative_attention`` with ``position_biased_input`` (both kinds of positions), an empty or
unknown ``pos_att_type`` with ``relative_attention``, segment or absolute-position tables
narrower than ``hidden_size`` (``type_vocab_size`` > 0 or ``position_biased_input`` with
``embedding_size`` ≠ ``hidden_size``: HF adds them before the projection), an
``attention_head_size`` other than ``hidden_size / num_attention_heads`` (HF's output layer
then fails), and log buckets HF itself cannot compute.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.bert import encoder_block, encoder_block_config
from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation
from txblocks.hf.rules import Rule
from txblocks_deberta.buckets import bucket_problem
from txblocks_deberta.disentangled import TERMS

__all__ = ["DEBERTA_V2"]

_LAYER = "encoder.layer.{i}"
_SELF = f"{_LAYER}.attention.self"

WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.tokens.weight"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_types.weight"),
    Rule("embeddings.position_embeddings.weight", "position.embedding.weight"),
    Rule("embeddings.embed_proj.weight", "embeddings.project.weight"),
    Rule("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
    Rule("encoder.rel_embeddings.weight", "position.rel_embeddings.weight"),
    Rule("encoder.LayerNorm.{p}", "position.norm.{p}"),
    Rule(tuple(f"{_SELF}.{x}_proj.{{p}}" for x in ("query", "key", "value")),
         "blocks.{i}.attention.qkv.{p}", "concat"),
    Rule(f"{_SELF}.pos_key_proj.{{p}}", "position.pos_key_proj.{i}.{p}"),
    Rule(f"{_SELF}.pos_query_proj.{{p}}", "position.pos_query_proj.{i}.{p}"),
    Rule(f"{_LAYER}.attention.output.dense.{{p}}", "blocks.{i}.attention.out.{p}"),
    Rule(f"{_LAYER}.attention.output.LayerNorm.{{p}}", "blocks.{i}.norm1.{p}"),
    Rule(f"{_LAYER}.intermediate.dense.{{p}}", "blocks.{i}.ffn.up.{p}"),
    Rule(f"{_LAYER}.output.dense.{{p}}", "blocks.{i}.ffn.down.{p}"),
    Rule(f"{_LAYER}.output.LayerNorm.{{p}}", "blocks.{i}.norm2.{p}"),
)  # fmt: skip


def _terms(c: ConfigView) -> list[str]:
    """The score terms of ``pos_att_type`` (a list, or HF's ``"p2c|c2p"`` string)."""
    raw = c.pos_att_type or []
    if isinstance(raw, str):
        raw = [t.strip() for t in raw.lower().split("|")]
    unknown = [t for t in raw if t not in TERMS]
    if unknown and c.relative_attention:
        c.unsupported("pos_att_type", f"{', '.join(unknown)}: only c2p and p2c are DeBERTa-v2 "
                      "terms (p2p is DeBERTa v1's, not computed by transformers' v2 model)")
    return [t for t in TERMS if t in raw]


def _norm_rel(c: ConfigView) -> bool:
    """Whether HF norms the relative embeddings (``norm_rel_ebd`` names ``layer_norm``)."""
    names = [x.strip() for x in str(c.get("norm_rel_ebd", "none")).lower().split("|")]
    return "layer_norm" in names


def _position(c: ConfigView, terms: list[str], hidden: int, width: int) -> dict[str, Any]:
    absolute = c.position_biased_input
    if not c.relative_attention:
        for unused in ("max_relative_positions", "position_buckets", "share_att_key"):
            c.get(unused)  # read by HF's relative attention only
        if _norm_rel(c):
            c.unsupported("norm_rel_ebd", "a norm of relative embeddings without "
                          "relative_attention (HF builds it and never uses it)")
        if absolute and width != hidden:
            c.unsupported("position_biased_input", f"absolute positions {width} wide, added "
                          f"before the projection to hidden_size {hidden}: not mapped")
        return {"type": "learned"} if absolute else {"type": "none"}
    if absolute:
        c.unsupported("position_biased_input", "absolute positions together with "
                      "relative_attention are not mapped; DeBERTa-v2/v3 checkpoints have false")
    if not terms:
        c.unsupported("pos_att_type", "relative_attention needs c2p and/or p2c")
    buckets = max(int(c.get("position_buckets", -1)), 0)
    span = c.max_relative_positions
    span = span if span >= 1 else c.max_position_embeddings
    problem = bucket_problem(buckets, span)
    if problem:
        c.unsupported("position_buckets", problem)
    return {
        "type": "disentangled", "position_buckets": buckets, "max_relative_positions": span,
        "terms": terms or list(TERMS),
        "norm_eps": c.layer_norm_eps if _norm_rel(c) else None,
        "share_att_key": bool(c.get("share_att_key", False)),
        "dropout": c.hidden_dropout_prob,
    }  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a DebertaV2Config (without head)."""
    if c.get("conv_kernel_size", 0) > 0:
        c.unsupported("conv_kernel_size", "the convolution after the first layer "
                      "(DeBERTa-v2-xlarge's ConvLayer) is not mapped")
    hidden, heads = c.hidden_size, c.num_attention_heads
    head_dim = hidden // heads
    if c.get("attention_head_size") not in (None, head_dim):
        c.unsupported("attention_head_size", f"HF's attention output layer takes hidden_size "
                      f"({hidden}) inputs: only hidden_size / num_attention_heads ({head_dim}) runs")
    width = c.get("embedding_size") or hidden
    terms = _terms(c)
    eps = c.layer_norm_eps
    embedding: dict[str, Any] = {"token_types": c.type_vocab_size,
                                 "norm": {"type": "layernorm", "eps": eps},
                                 "dropout": c.hidden_dropout_prob}  # fmt: skip
    if width != hidden:
        embedding.update(width=width, project_at="tokens", project_bias=False)
        if c.type_vocab_size > 0:
            c.unsupported("type_vocab_size", f"segment embeddings {width} wide (embedding_size), "
                          f"added before the projection to hidden_size {hidden}: not mapped")
    block = encoder_block(c, eps)
    block["attention"]["scale"] = (head_dim * (1 + len(terms))) ** -0.5
    return {
        "arch": "encoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": hidden,
        "n_layers": c.num_hidden_layers,
        "n_heads": heads,
        "position": _position(c, terms, hidden, width),
        "embedding": embedding,
        "block": block,
        "final_norm": False,
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """DebertaV2Config fields of a spec (checked by converting back)."""
    position = s.position
    relative = position.type == "disentangled"
    terms = list(position.terms) if relative else _scale_terms(s)
    out = {
        "vocab_size": s.vocab_size,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "max_position_embeddings": s.max_seq_len,
        "embedding_size": s.embedding.width or s.d_model,
        "relative_attention": relative,
        "position_biased_input": position.type == "learned",
        "pos_att_type": terms,
        "legacy": True,
        **encoder_block_config(s),
    }
    if relative:
        out.update(position_buckets=position.position_buckets,
                   max_relative_positions=position.max_relative_positions,
                   norm_rel_ebd="layer_norm" if position.norm_eps is not None else "none",
                   share_att_key=position.share_att_key)  # fmt: skip
    return out


def _scale_terms(s: Any) -> list[str]:
    """Without relative attention, the ``pos_att_type`` that gives the spec's attention scale
    (HF counts its terms in the scale even then); none when the scale is another."""
    scale = s.block.attention.scale
    if scale is None:
        return []
    count = round(1 / (scale * scale * s.head_size)) - 1
    return list(TERMS[:count]) if count in (1, 2) else []


def _mlm(c: ConfigView) -> dict[str, Any]:
    legacy = c.legacy
    if not legacy and (c.get("embedding_size") or c.hidden_size) != c.hidden_size:
        c.unsupported("legacy", "the non-legacy head multiplies by the word table, which "
                      "needs embedding_size = hidden_size")
    return {"type": "mlm", "activation": activation(c, "hidden_act"),
            "norm": {"type": "layernorm", "eps": c.layer_norm_eps},
            # the non-legacy head always reads the word table, whatever tie_word_embeddings says
            "tie_embeddings": bool(c.tie_word_embeddings) if legacy else True,
            "bias": True}  # fmt: skip


_LEGACY = "cls.predictions"
_HEAD = "lm_predictions.lm_head"
MLM_WEIGHTS = (
    Rule(f"{_LEGACY}.transform.dense.{{p}}", "head.dense.{p}"),
    Rule(f"{_HEAD}.dense.{{p}}", "head.dense.{p}"),
    Rule(f"{_LEGACY}.transform.LayerNorm.{{p}}", "head.norm.{p}"),
    Rule(f"{_HEAD}.LayerNorm.{{p}}", "head.norm.{p}"),
    Rule(f"{_LEGACY}.decoder.weight", "head.decoder.proj.weight"),
    Rule((f"{_LEGACY}.decoder.bias", f"{_LEGACY}.bias"), "head.decoder.proj.bias", "alias"),
    Rule(f"{_HEAD}.bias", "head.decoder.proj.bias"),
)  # fmt: skip

DEBERTA_V2 = HFFamily(
    name="deberta_v2",
    arch="encoder",
    model_type="deberta-v2",
    config_class="DebertaV2Config",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("DebertaV2Model", None),
        HFHead("DebertaV2ForMaskedLM", "mlm", spec=_mlm,
               config=lambda h: {"tie_word_embeddings": h["tie_embeddings"], "legacy": True},
               weights=MLM_WEIGHTS),
        HFHead(
            "DebertaV2ForTokenClassification", "token_classifier",
            spec=lambda c: {"type": "token_classifier", "n_classes": c.num_labels,
                            "dropout": c.hidden_dropout_prob},
            config=lambda h: {"num_labels": h["n_classes"], "hidden_dropout_prob": h["dropout"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"),),
        ),
    ),
    ignored={
        **{k: "read only by DebertaV2ForSequenceClassification's pooler (not mapped)"
           for k in ("pooler_dropout", "pooler_hidden_act", "pooler_hidden_size")},
        "legacy": "read by the MLM head only (both heads are mapped)",
    },
)  # fmt: skip
