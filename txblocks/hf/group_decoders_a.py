"""Hugging Face families added for issue 15 (group decoders_a); see docs/hf.md."""

from __future__ import annotations

from txblocks.hf.family import HFFamily
from txblocks.hf.falcon import FALCON
from txblocks.hf.gpt_neo import GPT_NEO
from txblocks.hf.gpt_neox import GPT_NEOX
from txblocks.hf.gptj import GPTJ
from txblocks.hf.opt import OPT
from txblocks.hf.phi import PHI

__all__ = ["FAMILIES"]

#: The families of this group, in the order ``to_hf`` tries them.
FAMILIES: tuple[HFFamily, ...] = (GPT_NEO, GPTJ, GPT_NEOX, OPT, FALCON, PHI)
