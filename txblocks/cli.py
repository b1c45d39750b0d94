"""The ``txblocks`` command line: list, validate, summary, schema, generate, train, doctor,
new-plugin."""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from txblocks.convert_command import add_convert_parser
from txblocks.doctor import add_doctor_parser
from txblocks.draw_command import add_draw_parser
from txblocks.errors import (
    BuildError,
    KernelUnavailableError,
    PluginError,
    QuantizationError,
    RegistryError,
    SpecError,
    did_you_mean,
)
from txblocks.plugins import default_registry
from txblocks.spec.io import load_spec
from txblocks.spec.schema import schema_text
from txblocks.train.command import add_train_parser

__all__ = ["SEED", "device_problem", "device_type", "float_range", "int_range", "main"]

#: ``generate --quantize`` shorthands; any registered quantization mode name works too.
QUANTIZE_MODES = {"int8": "int8_weight_only", "int8-dynamic": "int8_dynamic"}

# --- argument types: a value out of range is a usage error (exit 2) that names the flag ------


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``low..high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            limits = f"in {low}..{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {limits}, got {value}")
        return value
    return parse


def float_range(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number above ``low`` and at most ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        if not (math.isfinite(value) and value > low and (high is None or value <= high)):
            limits = f"above {low:g}" + (f" and at most {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {limits}, got {text[:40]}")
        return value
    return parse


#: ``--seed``: torch seeds are 64-bit; one bit is left for the seeds derived from it (seed + 1).
SEED = int_range(0, 2**63 - 1)


def device_type(text: str) -> str:
    """An argparse ``type=``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; whether that device
    exists here is :func:`device_problem`'s question (exit 1, not a usage error)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text[:40]!r}")
    return text


def device_problem(device: str) -> str | None:
    """Why ``device`` (accepted by :func:`device_type`) cannot run here, or None."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else (
                "no CUDA GPU is visible")
            return f"CUDA is not available ({why}); use --device cpu"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return (f"there {'is' if count == 1 else 'are'} only {count} CUDA device(s): "
                    f"cuda:0..cuda:{count - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "MPS (Apple GPU) is not available here; use --device cpu"
    return None


def _say(console: Console, message: str) -> int:
    """Print a refusal as plain text; exit status 1."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)
    return 1


def _write_text_atomically(path: Path, text: str) -> str | None:
    """Write ``text`` to ``path`` through a temp file renamed over it, so that ``path`` is
    the old file or the whole new one. Returns why it could not, naming the path, or None."""
    if path.is_dir():
        return f"cannot write {path}: it is a folder; give a file name"
    if path.exists() and not path.is_file():
        return f"cannot write {path}: it is not a regular file"
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        return f"cannot write {path}: the folder {path.parent} {what}"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode from the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return f"cannot write {path}: {exc.strerror or exc}"
    return None


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

    problem = device_problem(args.device) if args.device is not None else None
    if problem:
        return _say(console, f"--device {args.device}: {problem}")
    status = 0
    for path in args.specs:
        try:
            spec = load_spec(Path(path))
            summary = summarize(spec, seq_len=args.seq_len, device=args.device)
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
        problem = _write_text_atomically(Path(args.output), text)
        if problem:
            return _say(console, problem)
        console.print(f"wrote {args.output}", markup=False, highlight=False)
    else:
        sys.stdout.write(text)
    return 0


def _prompt_problem(prompt: str) -> str | None:
    """Why ``--prompt`` is not text (bytes that are not UTF-8 reach us as lone surrogates)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = prompt[exc.start]
        byte = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else (
            f"{char!r}")
        return f"--prompt is not UTF-8 text: {byte} at character {exc.start + 1}"
    return None


def _request_problem(args: argparse.Namespace, spec: Any, n_prompt: int) -> str | None:
    """Why the checkpoint's model cannot serve this request; every message names the flag."""
    where = f"{args.checkpoint} ({spec.arch} {spec.name!r})"
    if spec.arch not in ("decoder", "seq2seq"):
        return f"{where}: generate needs a decoder or seq2seq model, not {spec.arch}"
    if n_prompt == 0:
        return "--prompt is empty: give at least one token to continue"
    bad_eos = [e for e in args.eos or [] if e >= spec.vocab]
    if bad_eos:
        return (f"--eos {bad_eos[0]} is outside the vocabulary of {where}: ids must be in "
                f"0..{spec.vocab - 1}")
    limit, new = spec.max_seq_len, args.max_new_tokens
    if spec.arch == "decoder" and n_prompt + new > limit:
        fix = (f"lower --max-new-tokens to {limit - n_prompt}" if n_prompt < limit else
               f"shorten the prompt to under {limit} tokens")
        return (f"--prompt is {n_prompt} tokens; with --max-new-tokens {new} that needs "
                f"{n_prompt + new} positions, more than the max_seq_len {limit} of {where}: {fix}")
    if spec.arch == "seq2seq" and n_prompt > limit:
        return (f"--prompt is {n_prompt} tokens, more than the max_seq_len {limit} of {where}: "
                "shorten it")
    return None


def _load_for_generate(checkpoint: str, device: str) -> Any:
    """A txblocks checkpoint, or a Hugging Face folder (:func:`txblocks.from_pretrained`,
    which keeps the folder's ``tokenizer.json``)."""
    from txblocks.checkpoint import CheckpointError, load

    if not Path(checkpoint).is_dir():
        return load(checkpoint, device=device)
    from txblocks.hf import HFConversionError, from_pretrained

    try:
        return from_pretrained(checkpoint, device=device)
    except HFConversionError as exc:
        raise CheckpointError(checkpoint, [str(exc)]) from exc


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    import torch

    from txblocks.checkpoint import CheckpointError
    from txblocks.quantize import quantize
    from txblocks.tokenizer import TokenizerError, tokenizer_for

    modes = [*QUANTIZE_MODES, *default_registry().names("quantization")]
    if args.quantize is not None and args.quantize not in modes:
        return _say(console, f"unknown --quantize {args.quantize!r}; choose {', '.join(modes)}"
                    f"{did_you_mean(args.quantize, modes)}")
    problem = device_problem(args.device)
    if problem:
        return _say(console, f"--device {args.device}: {problem}")
    problem = _prompt_problem(args.prompt)
    if problem:
        return _say(console, problem)
    try:
        model = _load_for_generate(args.checkpoint, args.device)
        tokenizer = tokenizer_for(args.tokenizer or getattr(model, "tokenizer_path", None))
    except (CheckpointError, TokenizerError) as exc:
        return _say(console, str(exc))
    ids = tokenizer.encode(args.prompt)
    problem = _request_problem(args, model.spec, len(ids))
    if problem:
        return _say(console, problem)
    declared = model.spec.quantization
    if args.quantize is not None and declared is not None:
        return _say(console, f"{args.checkpoint}: its spec already declares quantization "
                    f"{declared.type!r}, applied on load; drop --quantize")
    try:
        if args.quantize is not None:
            quantize(model, QUANTIZE_MODES.get(args.quantize, args.quantize))
    except QuantizationError as exc:
        return _say(console, str(exc))
    vocab = model.spec.vocab
    if getattr(tokenizer, "vocab_size", 0) > vocab:
        return _say(console, f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                    f"{vocab}; pass --tokenizer with a matching tokenizer.json")
    settings = {
        "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample,
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "seed": args.seed, "eos_token_id": args.eos, "compile": args.compile,
    }
    tokens = model.stream(torch.tensor([ids], dtype=torch.long, device=args.device), **settings)
    try:  # the settings are checked before the first token: nothing is printed on refusal
        first = next(tokens, None)
    except ValueError as exc:  # pydantic's ValidationError is one too
        return _say(console, f"{args.checkpoint}: {exc}")
    sys.stdout.write(args.prompt if model.spec.arch == "decoder" else "")
    new: list[int] = []
    printed = ""
    for token in itertools.chain([] if first is None else [first], tokens):
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
    su.add_argument("--device", type=device_type, default=None,
                    help="name the kernel each layer would run on this device (auto → ...)")
    su.add_argument("--seq-len", type=int_range(1), default=128,
                    help="tokens in the measured forward (at most the spec's max_seq_len)")
    su.set_defaults(run=cmd_summary)
    ge = sub.add_parser("generate", help="continue a prompt with a saved model (txblocks.save)")
    ge.add_argument("checkpoint", help="a .safetensors file written by txblocks.save, or a "
                    "Hugging Face model folder (its tokenizer.json is used unless --tokenizer)")
    ge.add_argument("--prompt", required=True)
    ge.add_argument("--max-new-tokens", type=int_range(1), default=64)
    ge.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    ge.add_argument("--temperature", type=float_range(0), default=1.0, help="above 0")
    ge.add_argument("--top-k", type=int_range(1), help="at least 1")
    ge.add_argument("--top-p", type=float_range(0, 1), help="in (0, 1]")
    ge.add_argument("--seed", type=SEED)
    ge.add_argument("--eos", type=int_range(0), action="append",
                    help="end-of-sequence id (repeatable)")
    ge.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (default: UTF-8 bytes)")
    ge.add_argument("--device", type=device_type, default="cpu", help="cpu, cuda, cuda:N, mps")
    ge.add_argument("--compile", action="store_true",
                    help="decode with a compiled static-shape step (decoder models; compiles "
                    "on the first call, see docs/generation-compiled.md)")
    ge.add_argument("--quantize", metavar="MODE",
                    help="int8 linear layers via torchao (pip install 'txblocks[quant]'): int8 "
                    "(weight-only) or int8-dynamic (int8 activations too)")
    ge.set_defaults(run=cmd_generate)
    add_train_parser(sub)
    add_doctor_parser(sub)
    add_convert_parser(sub)
    add_draw_parser(sub)
    sc = sub.add_parser("schema", help="JSON Schema of specs for the installed components")
    sc.add_argument("-o", "--output", help="write to this file instead of stdout")
    sc.set_defaults(run=cmd_schema)
    from txblocks.testing.scaffold import run_new_plugin

    np_ = sub.add_parser("new-plugin", help="write a new plugin distribution from the template")
    np_.add_argument("name", help="plugin name: 'scalenorm' -> txblocks-scalenorm/")
    np_.add_argument("--dir", default=".", help="folder to create it in (default: .)")
    np_.set_defaults(run=run_new_plugin)
    return p


#: Errors that mean "this input is refused", each raised with a message naming what and
#: where; main prints the message without a traceback. Anything else is a bug in txblocks.
REFUSALS: tuple[type[BaseException], ...] = (
    SpecError, BuildError, PluginError, RegistryError, KernelUnavailableError, ValueError,
    OSError,
)


def _refusals() -> tuple[type[BaseException], ...]:
    """:data:`REFUSALS` and those of modules that ``main`` should not import up front."""
    from safetensors import SafetensorError

    from txblocks.checkpoint import CheckpointError
    from txblocks.train import TrainError

    return (*REFUSALS, CheckpointError, TrainError, SafetensorError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: exit 0 on success, 1 for a refused input (one clear message, no
    traceback), 2 for a usage error (argparse's, as a ``SystemExit``)."""
    args = parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        return int(args.run(args, console))
    except KeyboardInterrupt:
        print(f"txblocks {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `txblocks schema | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _refusals() as exc:
        what = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and (
            exc.filename and exc.strerror) else str(exc) or type(exc).__name__
        print(f"txblocks {args.command}: error: {what}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
