"""Hugging Face families added for issue 15 (group decoders_b) and issue 16; see docs/hf.md."""

from __future__ import annotations

from txblocks.hf.albert import ALBERT
from txblocks.hf.family import HFFamily
from txblocks.hf.gemma import GEMMA
from txblocks.hf.gemma2 import GEMMA2
from txblocks.hf.olmo import OLMO
from txblocks.hf.olmo2 import OLMO2
from txblocks.hf.phi3 import PHI3
from txblocks.hf.qwen3 import QWEN3
from txblocks.hf.stablelm import STABLELM
from txblocks.hf.starcoder2 import STARCODER2
from txblocks.hf.umt5 import UMT5, UMT5_ENCODER

__all__ = ["FAMILIES"]

#: The families of this group, in the order ``to_hf`` tries them.
FAMILIES: tuple[HFFamily, ...] = (
    PHI3, GEMMA, QWEN3, STABLELM, STARCODER2, OLMO, GEMMA2, OLMO2, UMT5, UMT5_ENCODER, ALBERT,
)  # fmt: skip
