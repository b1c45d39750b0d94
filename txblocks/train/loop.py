"""``txblocks train``: build a model from a spec and train it on a task or a text file.

In one process, or data-parallel on several under ``torchrun`` (``strategy="ddp"`` or
``"fsdp"``, see :mod:`txblocks.train.distributed`), with gradient accumulation and
resumable checkpoints (:mod:`txblocks.train.resume`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from txblocks.build import build
from txblocks.checkpoint import save
from txblocks.registry import Registry
from txblocks.spec.io import load_spec
from txblocks.spec.models import ModelSpec
from txblocks.train import distributed
from txblocks.train.checkpointing import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
)
from txblocks.train.distributed import Distributed
from txblocks.train.optim import adamw, warmup_cosine
from txblocks.train.progress import TrainProgress, examples_table
from txblocks.train.result import TrainResult
from txblocks.train.resume import load_checkpoint, save_checkpoint
from txblocks.train.safety import (
    check_finite_loss,
    check_finite_weights,
    non_finite_parameters,
    writable_target,
)
from txblocks.train.step import Stepper
from txblocks.train.tasks import TASKS, Task, TextFileTask, TrainError, check_fits, make_task

__all__ = ["TrainResult", "run"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class _Plan:
    """The settings of a run, checked."""

    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    warmup: int | None
    weight_decay: float
    grad_clip: float
    seed: int
    dtype: torch.dtype
    compile: bool
    checkpointing: bool
    eval_examples: int
    show: int
    save_every: int | None
    checkpoint_dir: Path | None
    resume: Path | None

    def saves_at(self, step: int) -> bool:
        if self.checkpoint_dir is None:
            return False
        return step == self.steps or (self.save_every is not None and step % self.save_every == 0)


def _resolve_task(task: str | Task | None, data: str | Path | None, spec: ModelSpec) -> Task:
    if data is not None:
        if task is not None:
            raise TrainError("pass a task or a data file, not both")
        if spec.arch != "decoder":
            raise TrainError(f"a data file trains decoders (next-byte prediction), but spec "
                             f"{spec.name!r} is arch {spec.arch!r}; built-in tasks for it: "
                             + ", ".join(n for n, t in TASKS.items() if spec.arch in t.archs))
        text = TextFileTask(data, block_size=min(128, spec.max_seq_len))
        check_fits(text, spec)
        return text
    if task is None or isinstance(task, str):
        return make_task(task, spec)
    check_fits(task, spec)
    return task


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise TrainError(f"unknown dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _threads() -> str:
    n = torch.get_num_threads()
    return f" ({n} thread{'s' if n != 1 else ''})"


def _check_numbers(positive: dict[str, float], non_negative: dict[str, float]) -> None:
    """Every setting finite, and positive (or at least 0); all problems in one error."""
    bad = [f"{k} must be finite, got {v}" for k, v in {**positive, **non_negative}.items()
           if not math.isfinite(v)]
    bad += [f"{k} must be positive, got {v}" for k, v in positive.items()
            if math.isfinite(v) and not v > 0]
    bad += [f"{k} must be at least 0, got {v}" for k, v in non_negative.items()
            if math.isfinite(v) and v < 0]
    if bad:
        raise TrainError("; ".join(bad))


def run(
    spec: Any,
    *,
    task: str | Task | None = None,
    data: str | Path | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    dtype: str | torch.dtype | None = None,
    compile: bool = False,
    activation_checkpointing: bool = False,
    checkpoint_path: str | Path | None = None,
    eval_examples: int = 256,
    show: int = 8,
    console: Console | None = None,
    registry: Registry | None = None,
    strategy: str = "none",
    grad_accum: int = 1,
    save_every: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> TrainResult:
    """Build a model from ``spec`` and train it, in this process or data-parallel.

    Batches are generated by the task from a ``torch.Generator`` seeded with ``seed``, and
    the model is initialised under ``torch.manual_seed(seed)`` (the global random state
    is restored afterwards), so a run on the CPU is reproducible. The loss is the task's
    plus the model's ``aux_loss`` (MoE load balancing). AdamW, linear warmup then cosine
    decay to a tenth of ``lr``, gradient clipping at ``grad_clip`` (global norm).

    With ``strategy="ddp"`` or ``"fsdp"`` each process started by ``torchrun`` (or by a
    caller that initialised ``torch.distributed``) trains on its slice of every global
    batch, so N processes follow the losses of one process with the same ``batch_size``.
    Rank 0 prints, evaluates and saves; every rank returns a result.

    Args:
        spec: a spec, or anything :func:`txblocks.load_spec` accepts.
        task: a built-in task name (``addition``, ``copy``, ``sorted``, ``reverse``,
            ``shapes``), a :class:`Task`, or None for the arch's default.
        data: a text file to train a decoder on, byte by byte, instead of a task.
        steps, batch_size, lr: optimisation steps, examples per step (the global batch, over
            all processes), peak learning rate.
        warmup: warmup steps; default a tenth of ``steps`` (at most 100).
        weight_decay: AdamW's, on weight matrices only.
        grad_clip: the largest gradient norm; 0 turns clipping off.
        seed: seeds the weights, the batches, dropout and the final examples.
        device: where to train; ``cuda`` under torchrun means ``cuda:LOCAL_RANK``.
        threads: CPU threads for this run (``torch.set_num_threads``, restored after);
            default torch's. On a small machine that also runs other work, 1 is often
            much faster than several: a thread that waits for a busy core stalls every op.
        dtype: ``float32`` (default), or ``bfloat16`` / ``float16`` for mixed precision
            (autocast; the weights stay float32; float16 adds loss scaling).
        compile: run the training forward through :func:`torch.compile`.
        activation_checkpointing: recompute each block's activations in backward
            (:func:`enable_activation_checkpointing`, undone after training).
        checkpoint_path: save the trained model there with :func:`txblocks.save` (rank 0);
            checked to be writable before training. Weights that are not finite are never
            saved (an existing file stays as it was).
        eval_examples: fresh examples answered after training, for ``accuracy``.
        show: how many of them the final table shows (0: no table).
        console: where to print; default a new :class:`rich.console.Console`.
        registry: for specs given as paths, text or dicts.
        strategy: ``none`` (one process), ``ddp`` (DistributedDataParallel) or ``fsdp``
            (FSDP2 ``fully_shard``); the last two need torchrun.
        grad_accum: micro-batches per step and process; ``batch_size`` must divide by
            the number of processes × ``grad_accum``.
        save_every: write a resumable checkpoint every that many steps (and after the
            last) into ``checkpoint_dir``.
        checkpoint_dir: where resumable checkpoints go (``step-N`` folders, written with
            ``torch.distributed.checkpoint``); alone, one checkpoint after the last step.
        resume: a checkpoint folder, or a ``checkpoint_dir`` to resume from its latest
            checkpoint: the run continues from that step as if never interrupted.

    Raises:
        TrainError: an unknown task, a task for another arch, a spec that does not fit the
            task (vocabulary, length, head), a missing data file, bad settings (not finite,
            not positive), a ``checkpoint_path`` that cannot be written, a strategy without
            torchrun, a checkpoint that does not fit the run, or a loss or weights that
            became NaN or inf (the run stops; nothing more is saved).
        SpecError: the spec is invalid.
    """
    console = console or Console()
    spec = load_spec(spec, registry=registry)
    chosen = _resolve_task(task, data, spec)
    _check_numbers(
        {"steps": steps, "batch_size": batch_size, "lr": lr, "eval_examples": eval_examples,
         "grad_accum": grad_accum, **({} if threads is None else {"threads": threads}),
         **({} if save_every is None else {"save_every": save_every})},
        {"weight_decay": weight_decay, "grad_clip": grad_clip,
         **({} if warmup is None else {"warmup": warmup})})
    out = None if checkpoint_path is None else writable_target(Path(checkpoint_path))
    if save_every is not None and checkpoint_dir is None:
        raise TrainError("save_every needs a checkpoint_dir (--checkpoint-dir DIR) to write to")
    dtype = _dtype(dtype)
    if dtype == torch.float16 and strategy == "fsdp":
        raise TrainError("float16 loss scaling is not supported with strategy 'fsdp'; "
                         "use bfloat16 (no loss scaling needed)")
    plan = _Plan(steps, batch_size, grad_accum, lr, warmup, weight_decay, grad_clip, seed, dtype,
                 compile, activation_checkpointing, eval_examples, show, save_every,
                 None if checkpoint_dir is None else Path(checkpoint_dir),
                 None if resume is None else Path(resume))
    previous_threads = torch.get_num_threads()
    env = distributed.setup(strategy, device)
    try:
        distributed.check_batch_size(batch_size, env.world_size, grad_accum)
        if not env.is_main:
            console = Console(quiet=True)
        if threads is not None:
            torch.set_num_threads(threads)
        devices = [env.device] if env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = build(spec, device=env.device, registry=registry)
            distributed.seed_rank(seed, env)

            def rebuild() -> nn.Module:
                with torch.random.fork_rng(devices=devices):
                    return build(spec, device=env.device, registry=registry)

            settings = {"spec": spec.to_yaml(), "task": chosen.name, "batch_size": str(batch_size),
                        "seed": str(seed)}
            result = _train(model, chosen, console, env, plan, settings, rebuild)
    finally:
        torch.set_num_threads(previous_threads)
        distributed.teardown(env)
    if out is not None and env.is_main:
        check_finite_weights(result.model, f"nothing was saved to {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        save(result.model, out, metadata={"task": chosen.name, "steps": str(steps),
                                          "seed": str(seed), "accuracy": f"{result.accuracy:.4f}"})
        result.checkpoint = out
        console.print(f"saved {out}", highlight=False, soft_wrap=True)
    return result


def _check_weights_on_every_rank(model: nn.Module, env: Distributed, step: int) -> None:
    """Refuse a resumable checkpoint of weights that are not finite, on every rank at once
    (each rank checks its shards)."""
    bad = torch.tensor([float(len(non_finite_parameters(model)))], device=env.device)
    distributed.all_reduce_sum(bad, env)
    if bad.item():
        raise TrainError(f"the weights are not finite after step {step}: training diverged "
                         "(lower lr); no checkpoint was written and the run stopped")


def _header(model: nn.Module, task: Task, env: Distributed, plan: _Plan) -> str:
    n_params = sum(p.numel() for p in model.parameters())  # an FSDP2 DTensor counts its whole
    parallel = ""
    if env.parallel:
        parallel = f", {env.strategy} on {env.world_size} rank{'s' if env.world_size != 1 else ''}"
    if plan.grad_accum > 1 or env.parallel:
        micro = plan.batch_size // (env.world_size * plan.grad_accum)
        plural = "es" if plan.grad_accum > 1 else ""
        parallel += f", {plan.grad_accum} micro-batch{plural} of {micro}"
        parallel += " per rank" if env.parallel else ""
    device = env.device
    return (f"training [bold]{escape(model.spec.name)}[/] ({model.spec.arch}, "
            f"{n_params:,} parameters) on task [bold]{escape(task.name)}[/]: "
            f"{plan.steps} steps of {plan.batch_size}, lr {plan.lr:g}, seed {plan.seed}, {device}"
            + (_threads() if device.type == "cpu" else "")
            + f", {str(plan.dtype).removeprefix('torch.')}"
            + (", compiled" if plan.compile else "")
            + (", checkpointed" if plan.checkpointing else "") + parallel)


def _train(model: nn.Module, task: Task, console: Console, env: Distributed, plan: _Plan,
           settings: dict[str, str], rebuild: Callable[[], nn.Module]) -> TrainResult:
    if plan.checkpointing:
        enable_activation_checkpointing(model)
    wrapped = distributed.wrap(model, env)
    optimizer = adamw(wrapped, plan.lr, plan.weight_decay)  # after wrapping: FSDP2's DTensors
    warmup = min(100, max(1, plan.steps // 10)) if plan.warmup is None else plan.warmup
    schedule = warmup_cosine(optimizer, warmup, plan.steps)
    scaler = torch.amp.GradScaler(env.device.type, enabled=plan.dtype == torch.float16)
    generator = torch.Generator().manual_seed(plan.seed)
    stepper = Stepper(torch.compile(wrapped) if plan.compile else wrapped, wrapped, optimizer,
                      schedule, scaler, task, env, plan.grad_accum, plan.grad_clip, plan.dtype)
    # (steps, 2): each step's loss and accuracy, written in place (holding each step's loss
    # tensor would pin its memory), summed over ranks at each log line and checkpoint.
    history = torch.zeros(plan.steps, 2, device=env.device)
    start = 0
    if plan.resume is not None:
        resumed = load_checkpoint(plan.resume, model=wrapped, optimizer=optimizer,
                                  schedule=schedule, scaler=scaler, generator=generator,
                                  env=env, settings=settings)
        start = resumed.step
        if start >= plan.steps:
            raise TrainError(f"the checkpoint in {plan.resume} is at step {start}: "
                             f"steps={plan.steps} leaves nothing to train")
        history[:start] = torch.tensor([resumed.losses, resumed.accuracies]).T
    console.print(_header(model, task, env, plan), soft_wrap=True)
    if start:
        console.print(f"resumed from step {start} ({resumed.path})", highlight=False,
                      soft_wrap=True)
    reduced, tokens, begin = start, 0, time.perf_counter()
    model.train()
    with TrainProgress(console, plan.steps, task.name) as progress:
        for step in range(start + 1, plan.steps + 1):
            batch = task.batch(plan.batch_size, generator)
            tokens += stepper.step(batch, history[step - 1])
            logs = step % 10 == 0 or step == plan.steps
            if logs or plan.saves_at(step):
                distributed.all_reduce_sum(history[reduced:step], env)
                check_finite_loss(history[reduced:step, 0], reduced)
                reduced = step
            if logs:
                window = history[max(0, step - 10):step].mean(0).tolist()
                progress.update(step, window[0], window[1],
                                tokens / (time.perf_counter() - begin))
            if plan.saves_at(step):
                _check_weights_on_every_rank(model, env, step)
                done = history[:step].T.tolist()
                path = save_checkpoint(plan.checkpoint_dir, model=wrapped, optimizer=optimizer,
                                       schedule=schedule, scaler=scaler, generator=generator,
                                       env=env, step=step, losses=done[0], accuracies=done[1],
                                       settings=settings)
                console.print(f"checkpoint {path}", highlight=False, soft_wrap=True)
    seconds = time.perf_counter() - begin
    if plan.checkpointing:
        disable_activation_checkpointing(model)  # the model is returned as it was built
    final = distributed.whole_model(model, wrapped, env, rebuild)
    final.eval()
    examples, accuracy = [], float("nan")
    if env.is_main:
        examples = task.examples(final, plan.eval_examples,
                                 torch.Generator().manual_seed(plan.seed + 1))
        accuracy = sum(e.correct for e in examples) / len(examples) if examples else accuracy
        if plan.show:
            console.print(examples_table(examples[:plan.show], f"{task.name}, {plan.steps} steps"))
    losses, accuracies = history.T.tolist()
    rate = tokens / seconds if seconds > 0 else 0.0
    console.print(f"loss {losses[0]:.4f} → {losses[-1]:.4f}; accuracy on {len(examples)} "
                  f"fresh examples {accuracy:.1%}; {seconds:.1f} s, {rate:,.0f} tok/s",
                  highlight=False, soft_wrap=True)
    return TrainResult(final, task.name, losses, accuracies, accuracy, examples, seconds, rate,
                       start_step=start)
