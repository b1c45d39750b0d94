"""``txblocks train SPEC``: the command line of :func:`txblocks.train.run`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from txblocks.errors import BuildError, SpecError

__all__ = ["MAX_BATCH", "MAX_STEPS", "add_train_parser", "cmd_train"]

#: ``--steps``: the run keeps two floats per step (loss history), so a typo of 10**20 steps
#: fails at once instead of asking torch for exabytes.
MAX_STEPS = 10**8
#: ``--batch-size``: examples per step, over all processes.
MAX_BATCH = 1 << 20


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    """Train; exit 1 with the reason when the spec, task, data, device, settings or save
    target do not fit, or when the save fails (read-only, full disk): the old file is kept."""
    from safetensors import SafetensorError

    from txblocks.checkpoint import CheckpointError
    from txblocks.cli import device_problem
    from txblocks.train import TrainError, run

    out = args.out
    if out is None:
        out = f"{Path(args.spec).stem}.safetensors"
    problem = device_problem(args.device)
    if problem is not None:
        problem = f"--device {args.device}: {problem}"
    elif Path(out).exists() and not (Path(out).is_file() or Path(out).is_dir()):
        problem = f"cannot save to {out}: it is not a regular file"  # e.g. /dev/full
    if problem is None:
        try:
            run(Path(args.spec), task=args.task, data=args.data, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed,
                device=args.device, threads=args.threads, dtype=args.dtype,
                compile=args.compile, activation_checkpointing=args.activation_checkpointing,
                checkpoint_path=out, console=console, strategy=args.strategy,
                grad_accum=args.grad_accum, save_every=args.save_every,
                checkpoint_dir=args.checkpoint_dir, resume=args.resume)
        except (TrainError, SpecError, BuildError, CheckpointError) as exc:
            problem = str(exc)
        except (OSError, SafetensorError) as exc:  # a read-only or full disk while saving
            problem = f"cannot save to {out}: {exc}; the file there (if any) is unchanged"
    if problem is not None:
        console.print(problem, markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``sub`` (the result of ``add_subparsers``)."""
    from txblocks.cli import SEED, device_type, int_range  # here: cli imports this module
    tr = sub.add_parser("train", help="train a spec on a built-in task or a text file; save it",
                        description="Train SPEC on a synthetic task chosen by its arch (decoder: "
                        "addition, encoder: sorted, seq2seq: reverse, vit: shapes) or on a text "
                        "file (decoders), show a few predictions, save the model.")
    tr.add_argument("spec", help="a spec file (YAML or JSON)")
    tr.add_argument("--task", help="addition, copy (decoder), sorted (encoder), reverse "
                    "(seq2seq), shapes (vit); default the arch's")
    tr.add_argument("--data", metavar="FILE", help="a text file: byte-level next-token training "
                    "of a decoder (vocab_size >= 256) instead of a task")
    tr.add_argument("--steps", type=int_range(1, MAX_STEPS), default=1000)
    tr.add_argument("--batch-size", type=int_range(1, MAX_BATCH), default=64, help="examples per step: the "
                    "global batch, over all processes (default: 64)")
    tr.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, warmup "
                    "then cosine); run() refuses one that is not finite and positive")
    tr.add_argument("--warmup", type=int_range(0), help="warmup steps (default: a tenth of "
                    "--steps, at most 100)")
    tr.add_argument("--seed", type=SEED, default=0)
    tr.add_argument("--device", type=device_type, default="cpu", help="cpu, cuda, cuda:N, mps")
    tr.add_argument("--threads", type=int_range(1, 4096), help="CPU threads (default: torch's); 1 is "
                    "often fastest for tiny models on a busy machine")
    tr.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="bfloat16/float16: mixed precision (autocast)")
    tr.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    tr.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute each block's activations in backward to save memory")
    tr.add_argument("--out", metavar="FILE", help="where to save (txblocks.save); default "
                    "SPEC-STEM.safetensors in the current directory")
    scale = tr.add_argument_group(
        "scale-out", "data-parallel training under torchrun, e.g. `torchrun --nproc-per-node 4 "
        "-m txblocks train SPEC --strategy fsdp`, and resumable checkpoints; see "
        "docs/scale-out.md")
    scale.add_argument("--strategy", choices=["none", "ddp", "fsdp"], default="none",
                       help="none: one process; ddp: DistributedDataParallel; fsdp: FSDP2 "
                       "fully_shard per block (both need torchrun)")
    scale.add_argument("--grad-accum", type=int_range(1), default=1, metavar="K",
                       help="micro-batches per step and process; --batch-size (the global "
                       "batch) must divide by processes x K")
    scale.add_argument("--save-every", type=int_range(1), metavar="N", help="write a resumable "
                       "checkpoint (torch.distributed.checkpoint) every N steps and at the end")
    scale.add_argument("--checkpoint-dir", metavar="DIR", help="where --save-every writes "
                       "(DIR/step-N); alone: one checkpoint after the last step")
    scale.add_argument("--resume", metavar="DIR", help="continue from the latest checkpoint in "
                       "DIR (or from DIR/step-N itself), as if never interrupted")
    tr.set_defaults(run=cmd_train)
    return tr
