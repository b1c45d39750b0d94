"""T5 (``T5Model``, ``T5ForConditionalGeneration``, ``T5EncoderModel``) <-> a pre-norm
RMSNorm encoder–decoder with one relative-position bias table per stack.

T5 (Raffel et al. 2020) scores are not scaled (``attention.scale: 1``), no projection has
a bias, each stack's block 0 holds its stack's ``relative_attention_bias`` (txblocks:
``{encoder,decoder}.position.relative_attention_bias``; buckets bidirectional in the
encoder, causal in the decoder, no bias in cross-attention). ``feed_forward_proj``
``relu`` (``wi``, ``wo``) is an ``mlp``, ``gated-gelu`` (``wi_0`` gate, ``wi_1`` up) a
``glu`` with ``gelu_tanh``; every dropout is ``dropout_rate``.

The LM head: ``scale_decoder_outputs`` (transformers 5; ``tie_word_embeddings`` in 4.x)
multiplies the decoder output by ``d_model ** -0.5`` (``head.scale: rsqrt_d_model``). That
is ``T5ForConditionalGeneration``'s behaviour, not every T5-style class's: :func:`lm_head`
declares it per class and refuses the others (mT5 never scales).
transformers 5 always ties ``lm_head`` to ``shared`` when it builds a model, and unties it
when ``from_pretrained`` finds other weights (T5 v1.1, Flan-T5): whether the head is tied
is read from the model where there is one (from a config alone: tied iff scaled, as in the
checkpoints), and ``to_hf`` unties it when the spec's is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["T5", "T5_ENCODER", "lm_head", "t5_scaled"]


def _attention(hf: str, tx: str) -> tuple[Rule, ...]:
    qkv = tuple(f"{hf}.{x}.weight" for x in "qkv")
    return (Rule(qkv, f"{tx}.attention.qkv.weight", "concat"),
            Rule(f"{hf}.o.weight", f"{tx}.attention.out.weight"))  # fmt: skip


def _ffn(hf: str, tx: str) -> tuple[Rule, ...]:
    return (
        Rule(f"{hf}.DenseReluDense.wi.weight", f"{tx}.ffn.up.weight"),
        Rule((f"{hf}.DenseReluDense.wi_0.weight", f"{hf}.DenseReluDense.wi_1.weight"),
             f"{tx}.ffn.gate_up.weight", "concat"),
        Rule(f"{hf}.DenseReluDense.wo.weight", f"{tx}.ffn.down.weight"),
        Rule(f"{hf}.layer_norm.weight", f"{tx}.norm2.weight"),
    )  # fmt: skip


def _stack(stack: str, tx: str) -> tuple[Rule, ...]:
    """Rules of one stack; ``tx`` is its txblocks prefix (``encoder.`` or empty)."""
    hf, out = f"{stack}.block.{{i}}.layer", f"{tx}blocks.{{i}}"
    bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    rules = [
        Rule(bias, f"{tx}position.relative_attention_bias.weight"),
        *_attention(f"{hf}.0.SelfAttention", out),
        Rule(f"{hf}.0.layer_norm.weight", f"{out}.norm1.weight"),
        Rule(f"{stack}.final_layer_norm.weight", f"{tx}final_norm.weight"),
    ]
    if stack == "encoder":
        return (*rules, *_ffn(f"{hf}.1", out))
    cross = tuple(
        Rule(f"{hf}.1.EncDecAttention.{a}.weight", f"{out}.cross_attention.{b}.weight")
        for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "out"))
    )
    return (*rules, *cross, Rule(f"{hf}.1.layer_norm.weight", f"{out}.norm_cross.weight"),
            *_ffn(f"{hf}.2", out))  # fmt: skip


WEIGHTS = (
    Rule("shared.weight", "encoder.embeddings.tokens.weight"),
    *_stack("encoder", "encoder."),
    *_stack("decoder", "decoder."),
)
ENCODER_WEIGHTS = (Rule("shared.weight", "embeddings.tokens.weight"), *_stack("encoder", ""))


def _ffn_spec(c: ConfigView) -> dict[str, Any]:
    c.get("feed_forward_proj")  # HF derives the two below from it
    gated = bool(c.is_gated_act)
    act = activation(c, "feed_forward_proj", value=c.dense_act_fn)
    return {"type": "glu" if gated else "mlp", "hidden": c.d_ff, "activation": act,
            "bias": False, "dropout": c.dropout_rate}  # fmt: skip


def body(c: ConfigView, ffn: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields shared by the encoder–decoder and the encoder alone; ``ffn`` replaces
    T5's feed-forward (Switch Transformers' MoE layers keep this body)."""
    return {
        "vocab_size": c.vocab_size,
        "max_seq_len": c.get("n_positions") or 512,
        "d_model": c.d_model,
        "n_layers": c.num_layers,
        "n_heads": c.num_heads,
        "head_dim": c.d_kv,
        "position": {"type": "relative_bias", "num_buckets": c.relative_attention_num_buckets,
                     "max_distance": c.relative_attention_max_distance},
        "embedding": {"dropout": c.dropout_rate},
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "rmsnorm", "eps": c.layer_norm_epsilon},
            "attention": {"bias": False, "fused_qkv": True, "scale": 1.0,
                          "dropout": c.dropout_rate},
            "ffn": _ffn_spec(c) if ffn is None else ffn,
            "dropout": c.dropout_rate,
        },
        "final_norm": True,
        # HF draws the dense layers from N(0, (factor · d_model^-0.5)²)
        "init_std": c.initializer_factor * c.d_model**-0.5,
    }  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a T5Config (without head)."""
    return {"arch": "seq2seq", **body(c), "decoder_layers": c.num_decoder_layers,
            "shared_embeddings": True}  # fmt: skip


def encoder_spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a T5Config for ``T5EncoderModel`` (without head)."""
    c.get("num_decoder_layers")  # no decoder
    return {"arch": "encoder", **body(c)}


def _config(s: Any) -> dict[str, Any]:
    block = s.block
    ffn, act = block.ffn, getattr(block.ffn, "activation", None)
    gated = getattr(ffn, "type", None) == "glu"
    name = hf_activation(act, "gelu_new")
    # "gated-gelu" means the tanh GELU (gelu_new); gelu_python is the exact one
    gated_names = {"gelu_new": "gated-gelu", "gelu": "gated-gelu_python"}
    proj = gated_names.get(name, f"gated-{name}") if gated else name
    position = s.position
    return {
        "vocab_size": s.vocab_size,
        "n_positions": s.max_seq_len,
        "d_model": s.d_model,
        "d_kv": s.head_size,
        "d_ff": ffn_hidden(ffn, s.d_model),
        "num_layers": s.n_layers,
        "num_heads": s.n_heads,
        "relative_attention_num_buckets": getattr(position, "num_buckets", 32),
        "relative_attention_max_distance": getattr(position, "max_distance", 128),
        "dropout_rate": block.dropout,
        "layer_norm_epsilon": getattr(block.norm, "eps", 1e-6),
        "feed_forward_proj": proj,
        "initializer_factor": round(s.init_std * s.d_model**0.5, 12),  # 1.0 stays 1.0
    }


def config(s: Any) -> dict[str, Any]:
    """T5Config fields of a seq2seq spec (checked by converting back)."""
    return {**_config(s), "num_decoder_layers": s.stacks["decoder"]}


def t5_scaled(c: ConfigView) -> bool:
    """Whether ``T5ForConditionalGeneration`` scales the decoder output by ``d_model ** -0.5``:
    ``scale_decoder_outputs`` (transformers 5), else ``tie_word_embeddings`` (4.x)."""
    return bool(c.get("scale_decoder_outputs", c.tie_word_embeddings))


def lm_head(
    hf_class: str,
    *,
    model_type: str,
    scaled: Callable[[ConfigView], bool],
    scaled_config: Callable[[bool], dict[str, Any]],
    tied_without_model: Callable[[bool], bool] = bool,
) -> HFHead:
    """The LM head entry of a T5-style ``...ForConditionalGeneration`` class.

    Each class decides for itself whether it scales the decoder output, and a config flag
    that one class reads may mean nothing to another (``MT5Config`` forces
    ``tie_word_embeddings: true``, and ``MT5ForConditionalGeneration`` never scales). So
    the scale is declared per class, and the spec function refuses any other class or
    ``model_type``: a family that reuses this head for another class gets an
    :class:`~txblocks.hf.family.HFConversionError` naming it, not logits off by
    ``sqrt(d_model)``.

    Args:
        hf_class: the class this entry maps (``T5ForConditionalGeneration``).
        model_type: the ``config.model_type`` of that class (``t5``).
        scaled: config view -> whether ``hf_class`` multiplies the decoder output by
            ``d_model ** -0.5`` (``head.scale: rsqrt_d_model``).
        scaled_config: whether the spec's head is scaled -> the config fields that say so
            (checked by converting back; ``{}`` for a class that never scales).
        tied_without_model: whether the head is scaled -> whether it is tied, for a config
            without a model (default: tied iff scaled, the T5 checkpoints' convention).

    Whether the head is tied is read from the model where there is one (transformers 5
    builds these heads tied and ``from_pretrained`` unties them for T5 v1.1 / Flan-T5).
    """

    def spec(c: ConfigView) -> dict[str, Any]:
        if c.model_type != model_type:
            c.unsupported("model_type", (
                f"the {hf_class} head mapping reads how {hf_class} scales its decoder output "
                f"(a {model_type!r} config); a family for this model type must declare its "
                "own class and scale with txblocks.hf.t5.lm_head"))  # fmt: skip
        model = c.model
        if model is not None and type(model).__name__ != hf_class:
            c.unsupported("model_type", (
                f"the model is a {type(model).__name__}, and the head mapping describes "
                f"{hf_class}; declare its own entry with txblocks.hf.t5.lm_head"))  # fmt: skip
        scale = scaled(c)
        if model is not None:  # built tied by transformers 5, untied on load, not in the config
            tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        else:
            tied = tied_without_model(scale)
        return {"type": "lm", "tie_embeddings": bool(tied), "bias": False,
                "scale": "rsqrt_d_model" if scale else None}  # fmt: skip

    return HFHead(
        hf_class, "lm", spec=spec,
        config=lambda head: scaled_config(head["scale"] == "rsqrt_d_model"), prepare=_untie,
        weights=(Rule("lm_head.weight", "head.proj.weight"),),
    )  # fmt: skip


def _untie(model: Any, head: dict[str, Any] | None) -> None:
    """Give ``lm_head`` its own weight when the spec's head is untied (as T5 v1.1 loads)."""
    if head is None or head["tie_embeddings"]:
        return
    lm_head = model.get_output_embeddings()
    lm_head.weight = nn.Parameter(lm_head.weight.detach().clone())
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)


_IGNORED = {
    "is_decoder": "T5's classes set it per stack",
    "is_encoder_decoder": "T5's classes set it",
    "classifier_dropout": "read only by T5ForSequenceClassification",
}

T5 = HFFamily(
    name="t5",
    arch="seq2seq",
    model_type="t5",
    config_class="T5Config",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("T5Model", None),
        # T5Config turns tie_word_embeddings=False into scale_decoder_outputs=False (and ties)
        lm_head("T5ForConditionalGeneration", model_type="t5", scaled=t5_scaled,
                scaled_config=lambda scaled: {"tie_word_embeddings": scaled}),
    ),
    ignored=_IGNORED,
)

T5_ENCODER = HFFamily(
    name="t5_encoder",
    arch="encoder",
    model_type="t5",
    config_class="T5Config",
    spec=encoder_spec,
    config=_config,
    weights=ENCODER_WEIGHTS,
    heads=(HFHead("T5EncoderModel", None),),
    ignored={**_IGNORED, "scale_decoder_outputs": "T5EncoderModel has no LM head"},
)
