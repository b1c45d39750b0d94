"""``txblocks draw SPEC``: the architecture of a spec as a Mermaid diagram on stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["add_draw_parser", "cmd_draw"]


def cmd_draw(args: argparse.Namespace, console: Console) -> int:
    """Print the diagram (a refused spec is a ``SpecError``: ``main`` prints it, exit 1)."""
    from txblocks.draw import mermaid
    from txblocks.spec.io import load_spec

    text = mermaid(load_spec(Path(args.spec)))
    # Plain text, not through rich: labels hold brackets that rich would read as markup.
    sys.stdout.write(f"```mermaid\n{text}```\n" if args.fence else text)
    return 0


def add_draw_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``draw`` subcommand to ``sub`` (the result of ``add_subparsers``)."""
    draw = sub.add_parser("draw", help="the architecture of a spec as a Mermaid flowchart")
    draw.add_argument("spec", help="a spec file (YAML or JSON)")
    draw.add_argument("--fence", action="store_true",
                      help="wrap the diagram in a ```mermaid block, for Markdown (GitHub, mkdocs)")
    draw.set_defaults(run=cmd_draw)
    return draw
