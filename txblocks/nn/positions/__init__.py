"""Positional schemes: each a :class:`~txblocks.nn.positional.PositionalScheme`.

=====================  ======================================  ==========================
scheme                 acts at                                 reference
=====================  ======================================  ==========================
SinusoidalPositions    ``embed``                               Vaswani et al. 2017
LearnedPositions       ``embed``                               GPT-2, BERT, BART
RotaryPositions        ``rotary`` / ``rotate``                 Su et al. 2021 (RoPE)
ALiBi                  ``attention_bias``                      Press et al. 2022
RelativePositionBias   ``attention_bias``                      Raffel et al. 2020 (T5)
=====================  ======================================  ==========================

The base class itself is the ``none`` scheme.
"""

from txblocks.nn.positional import PositionalScheme
from txblocks.nn.positions.alibi import ALiBi, alibi_slopes
from txblocks.nn.positions.learned import LearnedPositions
from txblocks.nn.positions.relative_bias import RelativePositionBias, relative_position_bucket
from txblocks.nn.positions.rope import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    RopeScaling,
    RotaryPositions,
    RotaryTables,
    rope_inverse_frequencies,
)
from txblocks.nn.positions.sinusoidal import SinusoidalPositions, sinusoidal_table

__all__ = [
    "ALiBi",
    "DynamicNTKScaling",
    "LearnedPositions",
    "LinearScaling",
    "Llama3Scaling",
    "PositionalScheme",
    "RelativePositionBias",
    "RopeScaling",
    "RotaryPositions",
    "RotaryTables",
    "SinusoidalPositions",
    "alibi_slopes",
    "relative_position_bucket",
    "rope_inverse_frequencies",
    "sinusoidal_table",
]
