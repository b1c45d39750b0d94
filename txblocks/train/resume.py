"""Save a training run's whole state with ``torch.distributed.checkpoint`` (DCP) and resume it.

A checkpoint is a folder ``DIR/step-0000120`` written by :func:`torch.distributed.checkpoint.save`:
the model and the optimizer (by parameter name, whatever the wrapper: plain, DDP or FSDP2,
each rank writing its own shards), the learning-rate schedule, the float16 loss scale,
the step, the batch generator, the losses so far, the settings that fix the data, and
each rank's random state (dropout, MoE jitter). DCP reshards on load, so a checkpoint
written by N ranks resumes on M ranks, or in one process.

DCP writes ``.metadata`` last: a folder without it is an unfinished checkpoint and is
never resumed from.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from txblocks.train.distributed import Distributed
from txblocks.train.tasks.base import TrainError

__all__ = ["Resumed", "checkpoint_dir", "latest_checkpoint", "load_checkpoint",
           "save_checkpoint"]

_STEP = re.compile(r"step-(\d+)")
#: Settings that fix which examples each step draws: a resumed run must keep them.
FIXED = ("spec", "task", "batch_size", "seed")


@dataclass
class Resumed:
    """What a checkpoint restored besides the model and optimizer.

    Attributes:
        path: the checkpoint's folder.
        step: the optimisation steps done.
        losses, accuracies: their values, one per step done.
    """

    path: Path
    step: int
    losses: list[float]
    accuracies: list[float]


def checkpoint_dir(directory: str | Path, step: int) -> Path:
    """The folder of the checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"step-{step:07d}"


def _complete(path: Path) -> bool:
    return (path / ".metadata").is_file()


def latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint to resume from: ``path`` itself if it is one, else its complete
    ``step-N`` folder of the highest N.

    Raises:
        TrainError: no such folder, or no complete checkpoint in it.
    """
    path = Path(path)
    if _complete(path):
        return path
    if not path.is_dir():
        raise TrainError(f"cannot resume: checkpoint folder not found: {path}")
    steps = [(int(m.group(1)), p) for p in path.iterdir()
             if (m := _STEP.fullmatch(p.name)) and _complete(p)]
    if not steps:
        raise TrainError(f"cannot resume: {path} holds no complete checkpoint (step-N folders "
                         "with a .metadata file, written by --save-every / --checkpoint-dir)")
    return max(steps)[1]


def _rng_key(rank: int) -> str:
    return f"rng_rank{rank}"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
           scaler: torch.amp.GradScaler, generator: torch.Generator, env: Distributed,
           step: int, losses: list[float], accuracies: list[float],
           settings: dict[str, str]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    train = {"step": step, "schedule": schedule.state_dict(), "generator": generator.get_state(),
             "losses": losses, "accuracies": accuracies, "settings": json.dumps(settings),
             "world_size": env.world_size}
    if scaler.is_enabled():
        train["scaler"] = scaler.state_dict()
    return {"model": model_state, "optim": optim_state, "train": train,
            _rng_key(env.rank): _rng_state(env.device)}


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _single_process_quietly() -> Iterator[None]:
    """DCP warns that it assumes one process whenever it runs without a process group."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled, unavailable or "
                                "uninitialized")
        yield


def save_checkpoint(directory: str | Path, *, model: nn.Module,
                    optimizer: torch.optim.Optimizer, schedule: Any, scaler: torch.amp.GradScaler,
                    generator: torch.Generator, env: Distributed, step: int,
                    losses: list[float], accuracies: list[float],
                    settings: dict[str, str]) -> Path:
    """Write the run's state after ``step`` steps to ``directory/step-N``; every rank calls it.

    Args:
        model: the trained module as wrapped (plain, DDP or FSDP2).
        losses, accuracies: the global values of the steps done (the same on every rank).
        settings: the run's settings as strings; those in :data:`FIXED` are checked on resume.

    Returns:
        The checkpoint's folder.
    """
    path = checkpoint_dir(directory, step)
    state = _state(model, optimizer, schedule, scaler, generator, env, step, losses,
                   accuracies, settings)
    with _single_process_quietly():
        dcp.save(state, checkpoint_id=path, no_dist=_no_dist())
    return path


def _check_settings(path: Path, saved: dict[str, str], settings: dict[str, str]) -> None:
    changed = [f"{key}: {saved.get(key)!r} in the checkpoint, {settings[key]!r} now"
               for key in FIXED if key != "spec" and saved.get(key) != settings[key]]
    if saved.get("spec") != settings["spec"]:
        changed.insert(0, "spec: the checkpoint was written for another model spec")
    if changed:
        raise TrainError(f"cannot resume from {path}: the run's data would differ from the "
                         f"checkpointed run's:\n" + "\n".join(f"  {c}" for c in changed))


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: Any, scaler: torch.amp.GradScaler, generator: torch.Generator,
                    env: Distributed, settings: dict[str, str]) -> Resumed:
    """Restore a run's state from the checkpoint at ``path`` (see :func:`latest_checkpoint`)
    into the freshly built ``model`` (wrapped as for training), ``optimizer``, ``schedule``,
    ``scaler`` and ``generator``, and this rank's random state; every rank calls it.

    The random state of a rank that the checkpointed run did not have (more ranks now) is
    left as seeded.

    Raises:
        TrainError: the checkpoint was written with other data settings (:data:`FIXED`),
            or cannot be read into this model.
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = latest_checkpoint(path)
    keys = set(dcp.FileSystemReader(path).read_metadata().state_dict_metadata)
    if "train.settings" not in keys:
        raise TrainError(f"cannot resume from {path}: not a checkpoint of txblocks train")
    header = {"train": {"settings": ""}}
    with _single_process_quietly():
        dcp.load(header, checkpoint_id=path, no_dist=_no_dist())
        _check_settings(path, json.loads(header["train"]["settings"]), settings)
        # the template: this run's state (get_state_dict gives a fresh AdamW its state)
        state = _state(model, optimizer, schedule, scaler, generator, env, 0, [], [], {})
        if not any(k.startswith("train.scaler.") for k in keys):
            state["train"].pop("scaler", None)
        if not any(k.startswith(_rng_key(env.rank) + ".") for k in keys):
            del state[_rng_key(env.rank)]
        try:
            dcp.load(state, checkpoint_id=path, no_dist=_no_dist())
        except Exception as exc:  # DCP raises CheckpointException, RuntimeError, KeyError, ...
            raise TrainError(f"cannot resume from {path}: {exc}") from exc
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    train = state["train"]
    schedule.load_state_dict(train["schedule"])
    if "scaler" in train:
        scaler.load_state_dict(train["scaler"])
    generator.set_state(train["generator"])
    rng = state.get(_rng_key(env.rank))
    if rng is not None:
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and env.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], env.device)
    return Resumed(path, int(train["step"]), list(train["losses"]),
                   list(train["accuracies"]))
