"""Built-in front ends: ``tokens``, ``patches`` and ``audio_conv``.

A front end (kind ``front_end``) turns a model's raw inputs into its first hidden
states. Each factory takes ``(inputs: FrontEndInputs, config)``
(:class:`txblocks.nn.front_end.FrontEndInputs`) and returns an ``nn.Module``. A spec
without ``front_end`` gets its architecture's own: ``tokens`` for text, ``patches`` for
``vit``, with the same parameters and numbers as naming it.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from txblocks.errors import BuildError
from txblocks.nn.audio import AudioConv
from txblocks.nn.front_end import FrontEndInputs
from txblocks.nn.vit import PatchEmbedding
from txblocks.registry import ComponentConfig, Registry
from txblocks.spec.slots import Slot

__all__ = ["AudioConvConfig", "PatchesConfig", "TokensConfig", "register"]


class TokensConfig(ComponentConfig):
    """Token ids through the embedding table: the spec's ``embedding`` (scale, segments,
    norm, width) describes it. Text architectures (decoder, encoder, seq2seq) only."""


class PatchesConfig(ComponentConfig):
    """Pixels cut into patches by a strided convolution (Dosovitskiy et al. 2021, §3.1);
    the ``vit`` spec's image_size, patch_size, channels, class_token, register_tokens and
    patch_position give its geometry. ``vit`` only."""

    norm: Slot["norm"] | None = Field(
        None,
        description="A norm over every token after the class token and the positions are "
        "added: CLIP's pre_layrnorm (Radford et al. 2021); null: none.",
    )
    bias: bool = Field(True, description="A bias on the patch projection (CLIP: false).")


class AudioConvConfig(ComponentConfig):
    """Whisper's audio front end (Radford et al. 2022, §2.2): log-mel features through two
    1-D convolutions of width 3 with GELU, the second of stride 2 (F frames -> F / 2
    positions). The encoder's ``position`` is then added: a ``learned`` table holds the
    sinusoid Whisper stores. seq2seq only: the encoder reads ``input_features``, the decoder
    tokens."""

    mels: int = Field(80, gt=0, description="Mel bins of the input features (Whisper: 80 or 128).")


def _tokens(inputs: FrontEndInputs, config: TokensConfig) -> nn.Module:
    """The token embeddings of a text architecture."""
    if inputs.embeddings is None:
        raise BuildError(f"front_end: tokens reads token ids; arch {inputs.arch!r} has none "
                         "(use patches for vit)")
    return inputs.embeddings


def _patches(inputs: FrontEndInputs, config: PatchesConfig) -> PatchEmbedding:
    """The patch embedding of a vit, with an optional norm after it."""
    if inputs.patches is None:
        raise BuildError(f"front_end: patches reads pixels; arch {inputs.arch!r} reads token "
                         "ids (use tokens)")
    norm = config.norm.build(inputs.dims.d_model) if config.norm is not None else None
    return PatchEmbedding(**inputs.patches, norm=norm, bias=config.bias)


def _audio_conv(inputs: FrontEndInputs, config: AudioConvConfig) -> AudioConv:
    """The convolutions of a Whisper encoder."""
    if inputs.arch != "seq2seq":
        raise BuildError(f"front_end: audio_conv feeds the encoder of a seq2seq model, not arch "
                         f"{inputs.arch!r}")
    return AudioConv(config.mels, inputs.dims.d_model)


def register(registry: Registry) -> None:
    """Register the built-in front ends under kind ``front_end``."""
    registry.add("front_end", "tokens", _tokens, TokensConfig)
    registry.add("front_end", "patches", _patches, PatchesConfig)
    registry.add("front_end", "audio_conv", _audio_conv, AudioConvConfig)
