"""Activation checkpointing of every Transformer block, without changing the model's code.

Each block's ``forward`` is replaced, on the instance, by one that runs the class's
forward under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): activations
inside the block are dropped after the forward and recomputed during backward, with the
same random state (dropout, MoE jitter), so gradients are unchanged. No module is added
or renamed, so ``state_dict`` names stay the same. Calls without gradients, or with a
KV cache (generation), run the plain forward.

A mask object memoizes its dense forms and is shared by the blocks of a stack; a block
under checkpoint gets a fresh copy of it, so the forward and its recomputation run the
same operations (otherwise the recomputation would find the memo filled, save fewer
tensors, and checkpoint would refuse).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from txblocks.attention.mask import AttentionMask
from txblocks.nn.block import TransformerBlock

__all__ = ["disable_activation_checkpointing", "enable_activation_checkpointing"]


def _fresh(value: Any) -> Any:
    """A mask object with an empty memo; anything else as it is."""
    return dataclasses.replace(value) if isinstance(value, AttentionMask) else value


def _forward_fresh(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    args = tuple(_fresh(a) for a in args)
    kwargs = {k: _fresh(v) for k, v in kwargs.items()}
    return type(self).forward(self, *args, **kwargs)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    caching = kwargs.get("cache") is not None or kwargs.get("cross_cache") is not None
    if not torch.is_grad_enabled() or caching:
        return type(self).forward(self, *args, **kwargs)
    return checkpoint(_forward_fresh, self, *args, use_reentrant=False, **kwargs)


def _is_wrapped(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def enable_activation_checkpointing(model: nn.Module,
                                    block_type: type[nn.Module] = TransformerBlock) -> int:
    """Checkpoint the forward of every ``block_type`` module in ``model``, in place.

    Returns:
        The number of blocks now checkpointed (blocks already checkpointed count too).
    """
    count = 0
    for module in model.modules():
        if isinstance(module, block_type):
            if not _is_wrapped(module):
                # A bound method: copy.deepcopy rebinds it to the copy.
                module.forward = types.MethodType(_checkpointed_forward, module)
            count += 1
    return count


def disable_activation_checkpointing(model: nn.Module) -> int:
    """Undo :func:`enable_activation_checkpointing`; returns the number of blocks restored."""
    count = 0
    for module in model.modules():
        if _is_wrapped(module):
            del module.__dict__["forward"]
            count += 1
    return count
