"""Guards that keep a run from destroying work: a save target checked before training, and
a loss or weights that stop being finite stop the run before anything is saved."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from txblocks.train.tasks import TrainError

__all__ = ["check_finite_loss", "check_finite_weights", "non_finite_parameters",
           "writable_target"]


def writable_target(path: Path) -> Path:
    """``path`` if a file can be saved there (its folder exists or can be made, and is
    writable); else a :class:`TrainError` saying why, before any training is done."""
    if path.is_dir():
        raise TrainError(f"cannot save to {path}: it is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing ancestor: save creates the rest
    if not folder.is_dir():
        raise TrainError(f"cannot save to {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrainError(f"cannot save to {path}: {folder} is not writable")
    return path


def check_finite_loss(losses: Tensor, first_step: int) -> None:
    """Stop the run when a loss of ``losses`` (steps ``first_step + 1, ...``) is NaN or inf."""
    finite = torch.isfinite(losses)
    if bool(finite.all()):
        return
    index = int((~finite).nonzero()[0, 0])
    raise TrainError(f"the loss is {float(losses[index])} at step {first_step + index + 1}: "
                     "training diverged (lower lr, or keep grad_clip on); the run stopped and "
                     "saved nothing more")


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the floating parameters of ``model`` holding NaN or inf (a sharded
    parameter is checked on this process's shard)."""
    bad = []
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 DTensor
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            bad.append(name)
    return bad


def check_finite_weights(model: nn.Module, consequence: str) -> None:
    """Refuse to save weights that are not finite: an error naming them and ``consequence``."""
    bad = non_finite_parameters(model)
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TrainError(f"the trained weights are not finite ({listed}); {consequence}")
