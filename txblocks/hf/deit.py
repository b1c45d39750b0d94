"""DeiT (``DeiTModel``, ``DeiTForImageClassification``) <-> a ``vit`` with one register
token.

DeiT (Touvron et al. 2021) is ViT (:mod:`txblocks.hf.vit`: the same layer names) with a
second learned token after the class token, the distillation token. Its sequence is
``[cls, distillation, patches]``, as txblocks' ``[class, registers, patches]`` with
``register_tokens: 1``. HF adds a position row to each of them (``position_embeddings``
has ``2 + patches`` rows); a txblocks register has no position, so ``from_hf`` folds row 1
into the register (``registers = distillation_token + position_embeddings[:, 1]``) and
keeps the other rows as ``patch_embed.position``. ``to_hf`` writes the register as the
distillation token and a zero row 1: the same numbers, another split of the sum.

``DeiTForImageClassification`` classifies the class token (``classifier {pooling: cls}``).
``DeiTForImageClassificationWithTeacher`` averages two classifiers (class and distillation
tokens), which txblocks' heads do not do, and is refused with the other classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from txblocks.hf.family import ConfigView, HFFamily, HFHead
from txblocks.hf.rules import Rule
from txblocks.hf.vit import WEIGHTS as VIT_WEIGHTS
from txblocks.hf.vit import _classifier
from txblocks.hf.vit import config as vit_config
from txblocks.hf.vit import spec as vit_spec

__all__ = ["DEIT"]

_POSITIONS = "embeddings.position_embeddings"


class _PatchRows:
    """HF's (1, 2 + N, D) position table <-> txblocks' (1, 1 + N, D): row 1 (the
    distillation token's, folded into the register) left out; written back as zeros."""

    arity = 1

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        table = tensors[0]
        return torch.cat((table[:, :1], table[:, 2:]), dim=1)

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [torch.cat((tensor[:, :1], torch.zeros_like(tensor[:, :1]), tensor[:, 1:]), dim=1)]


class _Distillation:
    """(distillation_token, position table) <-> the register: the token plus its position
    row; written back as the token, the table left to :class:`_PatchRows`."""

    arity = 2

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        token, table = tensors
        return token + table[:, 1:2]

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [tensor, like[1]]


WEIGHTS = (
    *(rule for rule in VIT_WEIGHTS if rule.hf != _POSITIONS),
    Rule(_POSITIONS, "patch_embed.position", _PatchRows()),
    Rule(("embeddings.distillation_token", _POSITIONS), "patch_embed.registers", _Distillation()),
)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a DeiTConfig (without head)."""
    return {**vit_spec(c), "register_tokens": 1}


DEIT = HFFamily(
    name="deit",
    arch="vit",
    model_type="deit",
    config_class="DeiTConfig",
    spec=spec,
    config=vit_config,
    weights=WEIGHTS,
    heads=(
        HFHead("DeiTModel", None, ignore=("pooler.",), init_kwargs={"add_pooling_layer": False}),
        HFHead(
            "DeiTForImageClassification", "classifier", spec=_classifier,
            config=lambda head: {"num_labels": head["n_classes"]},
            weights=(Rule("classifier.{p}", "head.out.{p}"),),
        ),
    ),
    ignored={
        "encoder_stride": "read only by DeiTForMaskedImageModeling",
        "pooler_output_size": "read only by DeiTModel's pooler (skipped)",
        "pooler_act": "read only by DeiTModel's pooler (skipped)",
    },
)  # fmt: skip
