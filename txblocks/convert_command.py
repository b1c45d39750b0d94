"""``txblocks convert SRC DST``: a Hugging Face folder to a txblocks checkpoint, and back."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

__all__ = ["add_convert_parser", "cmd_convert"]

DTYPES = ("float32", "float16", "bfloat16")


def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    """Convert by what SRC is (a folder: to a ``.safetensors`` file; a file: to a folder);
    exit 1 with every problem when the files do not correspond."""
    import torch

    from txblocks.checkpoint import CheckpointError
    from txblocks.hf import HFConversionError, convert_checkpoint

    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    try:
        done = convert_checkpoint(args.src, args.dst, dtype=dtype,
                                  max_shard_size=args.max_shard_size, family=args.family)
    except (HFConversionError, CheckpointError, FileNotFoundError, OSError) as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return 1
    console.print(done, markup=False, highlight=False, soft_wrap=True)
    return 0


def add_convert_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to ``sub`` (the result of ``add_subparsers``)."""
    conv = sub.add_parser("convert", help="a Hugging Face folder <-> a txblocks .safetensors file")
    conv.add_argument("src", help="a Hugging Face model folder, or a txblocks .safetensors file")
    conv.add_argument("dst", help="the txblocks file to write, or the folder to write")
    conv.add_argument("--dtype", choices=DTYPES, help="folder -> file: the dtype to store "
                      "(default: the config's)")
    conv.add_argument("--max-shard-size", default="5GB",
                      help="file -> folder: largest shard, e.g. 500MB (default 5GB)")
    conv.add_argument("--family", help="file -> folder: the transformers family to write "
                      "(default: where the model came from, else the first that fits)")
    conv.set_defaults(run=cmd_convert)
    return conv
