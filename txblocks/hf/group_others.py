"""Hugging Face families added for issue 15 (group others); see docs/hf.md."""

from __future__ import annotations

from txblocks.hf.beit import BEIT
from txblocks.hf.clip_text import CLIP_TEXT
from txblocks.hf.clip_vision import CLIP_VISION
from txblocks.hf.deit import DEIT
from txblocks.hf.distilbert import DISTILBERT
from txblocks.hf.electra import ELECTRA
from txblocks.hf.family import HFFamily
from txblocks.hf.marian import MARIAN
from txblocks.hf.mbart import MBART
from txblocks.hf.mt5 import MT5, MT5_ENCODER
from txblocks.hf.pegasus import PEGASUS
from txblocks.hf.qwen2_moe import QWEN2_MOE
from txblocks.hf.switch_transformers import SWITCH, SWITCH_ENCODER
from txblocks.hf.whisper import WHISPER
from txblocks.hf.xlm_roberta import XLM_ROBERTA

__all__ = ["FAMILIES"]

#: The families of this group, in the order ``to_hf`` tries them.
FAMILIES: tuple[HFFamily, ...] = (
    XLM_ROBERTA, DISTILBERT, ELECTRA, MT5, MT5_ENCODER, MBART, MARIAN, PEGASUS,
    SWITCH, SWITCH_ENCODER, QWEN2_MOE, DEIT, CLIP_TEXT, CLIP_VISION,
    WHISPER, BEIT,
)  # fmt: skip
