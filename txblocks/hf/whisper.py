"""Whisper (``WhisperModel``, ``WhisperForConditionalGeneration``) <-> a ``seq2seq`` with an
``audio_conv`` front end.

Whisper (Radford et al. 2022) encodes log-mel features: ``encoder.conv1`` / ``conv2`` (two
1-D convolutions of width 3 with GELU, the second of stride 2) are txblocks'
``front_end: {type: audio_conv, mels: num_mel_bins}`` (``front_end.conv1`` / ``conv2``),
then ``embed_positions`` is added: a table of ``max_source_positions`` rows that HF
initialises to a sinusoid and stores in every checkpoint (frozen), held by the encoder's
``learned`` positions (``max_seq_len: max_source_positions``; HF requires exactly
``2 · max_source_positions`` frames). The decoder reads tokens with its own learned table of
``max_target_positions`` rows (``decoder_max_seq_len``). Both stacks are pre-norm (BART's
layer names, :mod:`txblocks.hf.bart`) with a final ``layer_norm``; the attention
projections are unfused because ``k_proj`` has no bias (``attention.k_bias: false``).
``proj_out`` is tied to ``decoder.embed_tokens`` (``lm {tie_embeddings: true}``).

``scale_embedding`` is defined by HF's config but never read by its forward. Generation
settings (``suppress_tokens``, ``begin_suppress_tokens``, forced ids) are not the model's
numbers: txblocks' ``generate(input_features=...)`` decodes greedily from
``decoder_start_token_id`` with none of them.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = ["WHISPER"]

_NORM_EPS = 1e-5  # nn.LayerNorm's default; the config has no option for it


def _layers(stack: str) -> tuple[Rule, ...]:
    hf, tx = f"{stack}.layers.{{i}}", f"{stack}.blocks.{{i}}"
    rules = [
        Rule(f"{hf}.self_attn.k_proj.weight", f"{tx}.attention.k.weight"),
        *(Rule(f"{hf}.self_attn.{x}_proj.{{p}}", f"{tx}.attention.{x}.{{p}}") for x in "qv"),
        Rule(f"{hf}.self_attn.out_proj.{{p}}", f"{tx}.attention.out.{{p}}"),
        Rule(f"{hf}.self_attn_layer_norm.{{p}}", f"{tx}.norm1.{{p}}"),
        Rule(f"{hf}.fc1.{{p}}", f"{tx}.ffn.up.{{p}}"),
        Rule(f"{hf}.fc2.{{p}}", f"{tx}.ffn.down.{{p}}"),
        Rule(f"{hf}.final_layer_norm.{{p}}", f"{tx}.norm2.{{p}}"),
    ]
    if stack == "decoder":
        rules += [
            Rule(f"{hf}.encoder_attn.k_proj.weight", f"{tx}.cross_attention.k.weight"),
            *(Rule(f"{hf}.encoder_attn.{a}_proj.{{p}}", f"{tx}.cross_attention.{a}.{{p}}")
              for a in ("q", "v", "out")),
            Rule(f"{hf}.encoder_attn_layer_norm.{{p}}", f"{tx}.norm_cross.{{p}}"),
        ]
    return tuple(rules)


WEIGHTS = (
    Rule("encoder.conv1.{p}", "front_end.conv1.{p}"),
    Rule("encoder.conv2.{p}", "front_end.conv2.{p}"),
    Rule("{s}.embed_positions.weight", "{s}.position.embedding.weight"),
    Rule("decoder.embed_tokens.weight", "decoder.embeddings.tokens.weight"),
    Rule("{s}.layer_norm.{p}", "{s}.final_norm.{p}"),
    *_layers("encoder"),
    *_layers("decoder"),
)  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a WhisperConfig (without head)."""
    if c.encoder_attention_heads != c.decoder_attention_heads:
        c.unsupported("decoder_attention_heads", (
            f"differs from encoder_attention_heads ({c.encoder_attention_heads}); a txblocks "
            "seq2seq model has one n_heads"))  # fmt: skip
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        if c.get(key):
            c.unsupported(key, "txblocks has no LayerDrop (it skips layers in training only); "
                          "set it to 0 to convert")  # fmt: skip
    if c.get("apply_spec_augment"):
        c.unsupported("apply_spec_augment", "SpecAugment masks features in training; txblocks "
                      "has none: set it to false to convert")
    norm = {"type": "layernorm", "eps": _NORM_EPS}
    ffn = {"type": "mlp", "hidden": c.encoder_ffn_dim, "bias": True,
           "activation": activation(c, "activation_function"), "dropout": c.activation_dropout}
    layers = []
    if c.decoder_ffn_dim != c.encoder_ffn_dim:
        layers.append({"stack": "decoder", "select": "all",
                       "ffn": {**ffn, "hidden": c.decoder_ffn_dim}})
    return {
        "arch": "seq2seq",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_source_positions,
        "decoder_max_seq_len": c.max_target_positions,
        "d_model": c.d_model,
        "n_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "n_heads": c.encoder_attention_heads,
        "position": {"type": "learned", "offset": 0},
        "front_end": {"type": "audio_conv", "mels": c.num_mel_bins},
        "embedding": {"scale": None, "norm": None, "dropout": c.dropout},
        "shared_embeddings": True,
        "block": {
            "layout": "pre_norm",
            "norm": norm,
            "attention": {"bias": True, "k_bias": False, "fused_qkv": False,
                          "dropout": c.attention_dropout},
            "ffn": ffn,
            "dropout": c.dropout,
        },
        "layers": layers,
        "final_norm": True,
        "init_std": c.init_std,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """WhisperConfig fields of a spec (checked by converting back)."""
    block = s.block
    decoder_ffn = s.block_for(0, "decoder").ffn
    return {
        "vocab_size": s.vocab_size,
        "num_mel_bins": s.front_end.mels,
        "max_source_positions": s.max_seq_len,
        "max_target_positions": s.max_seq_len_of("decoder"),
        "d_model": s.d_model,
        "encoder_layers": s.stacks["encoder"],
        "decoder_layers": s.stacks["decoder"],
        "encoder_attention_heads": s.n_heads,
        "decoder_attention_heads": s.n_heads,
        "encoder_ffn_dim": ffn_hidden(block.ffn, s.d_model),
        "decoder_ffn_dim": ffn_hidden(decoder_ffn, s.d_model),
        "activation_function": hf_activation(getattr(block.ffn, "activation", None)),
        "activation_dropout": getattr(block.ffn, "dropout", 0.0),
        "dropout": block.dropout,
        "attention_dropout": block.attention.dropout,
        "init_std": s.init_std,
        "tie_word_embeddings": True,
    }


WHISPER = HFFamily(
    name="whisper",
    arch="seq2seq",
    model_type="whisper",
    config_class="WhisperConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("WhisperModel", None),
        HFHead(
            "WhisperForConditionalGeneration", "lm",
            spec=lambda c: {"type": "lm", "tie_embeddings": True, "bias": False, "scale": None},
            config=lambda head: {},
        ),
    ),
    ignored={
        "scale_embedding": "defined by WhisperConfig, never read by the forward",
        "suppress_tokens": "a generation setting",
        "begin_suppress_tokens": "a generation setting",
        "forced_decoder_ids": "a generation setting",
        "max_length": "a generation setting",
        "median_filter_width": "word timestamps only",
        "use_weighted_layer_sum": "read only by WhisperForAudioClassification",
        "classifier_proj_size": "read only by WhisperForAudioClassification",
        "mask_time_prob": "SpecAugment (training, apply_spec_augment) only",
        "mask_time_length": "SpecAugment (training, apply_spec_augment) only",
        "mask_time_min_masks": "SpecAugment (training, apply_spec_augment) only",
        "mask_feature_prob": "SpecAugment (training, apply_spec_augment) only",
        "mask_feature_length": "SpecAugment (training, apply_spec_augment) only",
        "mask_feature_min_masks": "SpecAugment (training, apply_spec_augment) only",
        "is_encoder_decoder": "always true",
    },
)  # fmt: skip
