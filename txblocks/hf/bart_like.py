"""The BART-like encoder–decoders of fairseq / Marian lineage: MBart, Marian, Pegasus.

They share BART's weight names (:mod:`txblocks.hf.bart`: ``self_attn``, ``encoder_attn``,
``fc1`` / ``fc2``, ``*_layer_norm``, ``final_logits_bias``) and differ in four choices,
each a spec field:

========  ===========  =========================  ==============  =====================
family    layout       positions                  embedding norm  norm after each stack
========  ===========  =========================  ==============  =====================
BART      post_norm    learned, offset 2          yes             no
MBart     pre_norm     learned, offset 2          yes             yes (``layer_norm``)
Marian    post_norm    fixed sinusoid, ``half``   no              no
Pegasus   pre_norm     fixed sinusoid, ``half``   no              yes (``layer_norm``)
========  ===========  =========================  ==============  =====================

The fixed sinusoid is stored by HF as a frozen ``embed_positions.weight`` (sines in the
first half of each row, cosines in the second): txblocks computes it
(``position: {type: sinusoidal, layout: half}``), so ``from_hf`` checks that the HF table
is that sinusoid (a model whose table differs is refused) and skips it, and ``to_hf``
leaves the table HF computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from txblocks.hf.bart import _NORM_EPS, _layers, _Row
from txblocks.hf.bart import check_stacks
from txblocks.hf.bart import config as _config
from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation
from txblocks.hf.rules import Rule
from txblocks.nn.positions import sinusoidal_table

__all__ = ["Variant", "family"]


@dataclass(frozen=True)
class Variant:
    """One BART-like family's choices (see the module's table).

    Attributes:
        pre_norm: ``pre_norm`` blocks and a ``layer_norm`` after each stack (else BART's
            ``post_norm`` and none).
        sinusoid: positions from the fixed ``half`` sinusoid (else BART's learned table,
            offset 2).
        embedding_norm: ``layernorm_embedding`` after the embeddings.
    """

    pre_norm: bool
    sinusoid: bool
    embedding_norm: bool


def _weights(v: Variant) -> tuple[Rule, ...]:
    rules = [
        # tied: one tensor under all three names; untied: `shared` is unused by the forward
        Rule(("encoder.embed_tokens.weight", "shared.weight"), "encoder.embeddings.tokens.weight",
             "alias"),
        Rule("decoder.embed_tokens.weight", "decoder.embeddings.tokens.weight"),
        *_layers("encoder"),
        *_layers("decoder"),
    ]  # fmt: skip
    if not v.sinusoid:
        rules.append(Rule("{s}.embed_positions.weight", "{s}.position.embedding.weight"))
    if v.embedding_norm:
        rules.append(Rule("{s}.layernorm_embedding.{p}", "{s}.embeddings.norm.{p}"))
    if v.pre_norm:
        rules.append(Rule("{s}.layer_norm.{p}", "{s}.final_norm.{p}"))
    return tuple(rules)


def _ffn(c: ConfigView, hidden: int) -> dict[str, Any]:
    return {"type": "mlp", "hidden": hidden, "activation": activation(c, "activation_function"),
            "bias": True, "dropout": c.activation_dropout}  # fmt: skip


def _check_sinusoid(c: ConfigView) -> None:
    """Refuse a model whose stored position tables are not the fixed ``half`` sinusoid."""
    model = c.model
    if model is None:
        return
    for stack in (model.get_encoder(), model.get_decoder()):
        table = getattr(getattr(stack, "embed_positions", None), "weight", None)
        if table is None or table.device.type == "meta":
            continue
        n, d = table.shape
        want = sinusoidal_table(torch.arange(n), d, layout="half").to(table.dtype)
        gap = (table.detach().cpu().float() - want.float()).abs().max().item()
        if gap > 4 * torch.finfo(table.dtype).eps:
            c.unsupported("max_position_embeddings", (
                f"the {type(stack).__name__}'s embed_positions table is not the fixed sinusoid "
                f"(max |diff| {gap:.3g}); txblocks computes that table and cannot hold "
                "another one there"))  # fmt: skip


def _spec(c: ConfigView, v: Variant) -> dict[str, Any]:
    check_stacks(c)
    if v.sinusoid:
        _check_sinusoid(c)
    layers = []
    if c.decoder_ffn_dim != c.encoder_ffn_dim:
        layers.append({"stack": "decoder", "select": "all", "ffn": _ffn(c, c.decoder_ffn_dim)})
    norm = {"type": "layernorm", "eps": _NORM_EPS}
    position = ({"type": "sinusoidal", "layout": "half", "base": 10000.0} if v.sinusoid
                else {"type": "learned", "offset": 2})  # fmt: skip
    return {
        "arch": "seq2seq",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.d_model,
        "n_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "n_heads": c.encoder_attention_heads,
        "position": position,
        "embedding": {"scale": "sqrt_d_model" if c.scale_embedding else None,
                      "norm": norm if v.embedding_norm else None, "dropout": c.dropout},
        "shared_embeddings": bool(c.tie_word_embeddings),
        "block": {
            "layout": "pre_norm" if v.pre_norm else "post_norm",
            "norm": norm,
            "attention": {"bias": True, "fused_qkv": True, "dropout": c.attention_dropout},
            "ffn": _ffn(c, c.encoder_ffn_dim),
            "dropout": c.dropout,
        },
        "layers": layers,
        "final_norm": v.pre_norm,
        "init_std": c.init_std,
    }  # fmt: skip


def family(
    name: str,
    prefix: str,
    *,
    model_type: str,
    variant: Variant,
    lm_class: str,
    ignored: dict[str, str] | None = None,
    spec_extra: Any = None,
    config_extra: Any = None,
) -> HFFamily:
    """A BART-like family: ``{prefix}Model`` (no head) and ``lm_class`` (``lm`` with
    ``final_logits_bias`` as its bias).

    Args:
        spec_extra: ``(view, spec dict) -> None``, for the family's own options.
        config_extra: ``spec -> config fields``, their inverse.
    """

    def spec(c: ConfigView) -> dict[str, Any]:
        data = _spec(c, variant)
        if spec_extra is not None:
            spec_extra(c, data)
        return data

    def config(s: Any) -> dict[str, Any]:
        return {**_config(s), **(config_extra(s) if config_extra is not None else {})}

    tables = ("encoder.embed_positions.", "decoder.embed_positions.") if variant.sinusoid else ()
    return HFFamily(
        name=name,
        arch="seq2seq",
        model_type=model_type,
        config_class=f"{prefix}Config",
        spec=spec,
        config=config,
        weights=_weights(variant),
        heads=(
            HFHead(f"{prefix}Model", None, ignore=tables),
            HFHead(
                lm_class, "lm",
                spec=lambda c: {"type": "lm", "tie_embeddings": bool(c.tie_word_embeddings),
                                "bias": True, "scale": None},
                config=lambda head: {},
                weights=(Rule("lm_head.weight", "head.proj.weight"),
                         Rule("final_logits_bias", "head.proj.bias", _Row())),
                ignore=tuple(f"model.{t}" for t in tables),
            ),
        ),
        ignored={
            "forced_eos_token_id": "a generation setting",
            "forced_bos_token_id": "a generation setting",
            "is_decoder": f"read only by {prefix}ForCausalLM",
            **(ignored or {}),
        },
    )  # fmt: skip
