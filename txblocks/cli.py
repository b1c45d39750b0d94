"""The ``txblocks`` command line: list, validate, summary, schema, generate, train, doctor,
new-plugin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from txblocks.doctor import add_doctor_parser
from txblocks.errors import BuildError, QuantizationError, SpecError, did_you_mean
from txblocks.plugins import default_registry
from txblocks.spec.io import load_spec
from txblocks.spec.schema import schema_text
from txblocks.train.command import add_train_parser

__all__ = ["main"]

#: ``generate --quantize`` shorthands; any registered quantization mode name works too.
QUANTIZE_MODES = {"int8": "int8_weight_only", "int8-dynamic": "int8_dynamic"}


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    registry = default_registry()
    if args.kind is not None and args.kind not in registry.kinds():
        console.print(f"[red]unknown kind {args.kind!r}[/]; kinds: {', '.join(registry.kinds())}")
        return 1
    table = Table(title="txblocks components")
    for column in ("kind", "name", "owner", "description"):
        table.add_column(column, overflow="fold")
    for entry in registry.entries(args.kind, args.pattern):
        table.add_row(entry.kind, entry.name, str(entry.owner), entry.description)
    console.print(table)
    return 0


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    failed = 0
    for path in args.specs:
        try:
            load_spec(Path(path))
        except SpecError as exc:
            failed += 1
            console.print(f"[red]✗ {path}[/]")
            for problem in exc.problems:
                console.print(f"    {problem}", markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]✓ {path}[/]")
    return 1 if failed else 0


def cmd_summary(args: argparse.Namespace, console: Console) -> int:
    from txblocks.summary import summarize

    status = 0
    for path in args.specs:
        try:
            spec = load_spec(Path(path))
            summary = summarize(spec, seq_len=args.seq_len)
        except (SpecError, BuildError) as exc:
            console.print(f"[red]{path}[/]")
            console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
            status = 1
            continue
        table = Table(title=f"{summary.name} ({summary.arch}) — {path}")
        for column in ("layer", "layout", "kernel", "mask", "ffn", "params"):
            table.add_column(column, justify="right" if column in ("layer", "params") else "left")
        for row in summary.layers:
            layer = f"{row.stack} {row.index}".strip()
            table.add_row(layer, row.layout, row.kernel, row.mask, row.ffn, _human(row.parameters))
        console.print(table)
        console.print(
            f"parameters {summary.parameters:,} ({_human(summary.parameters)}), "
            f"memory {_human(summary.parameter_bytes, 'B')}, "
            f"forward FLOPs at batch 1 × {summary.seq_len} tokens: {_human(summary.forward_flops)}\n"
        )
    return status


def cmd_schema(args: argparse.Namespace, console: Console) -> int:
    text = schema_text(default_registry())
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        console.print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    import torch

    from txblocks.checkpoint import CheckpointError, load
    from txblocks.quantize import quantize
    from txblocks.tokenizer import tokenizer_for

    modes = [*QUANTIZE_MODES, *default_registry().names("quantization")]
    if args.quantize is not None and args.quantize not in modes:
        console.print(f"unknown --quantize {args.quantize!r}; choose {', '.join(modes)}"
                      f"{did_you_mean(args.quantize, modes)}", markup=False, highlight=False,
                      soft_wrap=True)
        return 1
    try:
        model = load(args.checkpoint, device=args.device)
        declared = model.spec.quantization
        if args.quantize is not None and declared is not None:
            console.print(f"{args.checkpoint}: its spec already declares quantization "
                          f"{declared.type!r}, applied on load; drop --quantize", markup=False,
                          highlight=False, soft_wrap=True)
            return 1
        if args.quantize is not None:
            quantize(model, QUANTIZE_MODES.get(args.quantize, args.quantize))
        tokenizer = tokenizer_for(args.tokenizer)
    except (CheckpointError, QuantizationError, RuntimeError, FileNotFoundError) as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return 1
    vocab = model.spec.vocab
    if getattr(tokenizer, "vocab_size", 0) > vocab:
        console.print(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab}; "
                      "pass --tokenizer with a matching tokenizer.json", markup=False)
        return 1
    ids = torch.tensor([tokenizer.encode(args.prompt)], device=args.device)
    settings = {
        "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample,
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "seed": args.seed, "eos_token_id": args.eos,
    }
    sys.stdout.write(args.prompt if model.spec.arch == "decoder" else "")
    new: list[int] = []
    printed = ""
    for token in model.stream(ids, **settings):
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text
    if not printed.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txblocks", description="Transformer building blocks from a spec.")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="registered components: kind, name, owner, description")
    ls.add_argument("kind", nargs="?", help="attention, mask, position, norm, activation, ffn, head, …")
    ls.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'rope*'")
    ls.set_defaults(run=cmd_list)
    va = sub.add_parser("validate", help="check specs; exit 1 listing every problem")
    va.add_argument("specs", nargs="+")
    va.set_defaults(run=cmd_validate)
    su = sub.add_parser("summary", help="per-layer table, parameters, FLOPs, memory")
    su.add_argument("specs", nargs="+")
    su.add_argument("--seq-len", type=int, default=128, help="tokens in the measured forward")
    su.set_defaults(run=cmd_summary)
    ge = sub.add_parser("generate", help="continue a prompt with a saved model (txblocks.save)")
    ge.add_argument("checkpoint", help="a .safetensors file written by txblocks.save")
    ge.add_argument("--prompt", required=True)
    ge.add_argument("--max-new-tokens", type=int, default=64)
    ge.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ge.add_argument("--temperature", type=float, default=1.0)
    ge.add_argument("--top-k", type=int)
    ge.add_argument("--top-p", type=float)
    ge.add_argument("--seed", type=int)
    ge.add_argument("--eos", type=int, action="append", help="end-of-sequence id (repeatable)")
    ge.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (default: UTF-8 bytes)")
    ge.add_argument("--device", default="cpu")
    ge.add_argument("--quantize", metavar="MODE",
                    help="int8 linear layers via torchao (pip install 'txblocks[quant]'): int8 "
                    "(weight-only) or int8-dynamic (int8 activations too)")
    ge.set_defaults(run=cmd_generate)
    add_train_parser(sub)
    add_doctor_parser(sub)
    sc = sub.add_parser("schema", help="JSON Schema of specs for the installed components")
    sc.add_argument("-o", "--output", help="write to this file instead of stdout")
    sc.set_defaults(run=cmd_schema)
    from txblocks.testing.scaffold import run_new_plugin

    np_ = sub.add_parser("new-plugin", help="write a new plugin distribution from the template")
    np_.add_argument("name", help="plugin name: 'scalenorm' -> txblocks-scalenorm/")
    np_.add_argument("--dir", default=".", help="folder to create it in (default: .)")
    np_.set_defaults(run=run_new_plugin)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    return int(args.run(args, console))


if __name__ == "__main__":
    raise SystemExit(main())
