"""Reading the tables the CLI prints, for tests (that a plugin is listed, say)."""

from __future__ import annotations

__all__ = ["listed_rows"]


def listed_rows(out: str) -> list[list[str]]:
    """The body rows of a table the CLI printed (``txblocks list``: ``[kind, name, owner,
    description]`` each; ``txblocks summary``'s layers), with cells that rich wrapped onto
    several lines joined again by single spaces."""
    table: list[list[str]] = []
    for line in out.splitlines():
        if line.strip().startswith("│"):
            cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
            if cells[0] or not table:
                table.append(cells)
            else:
                joined = zip(table[-1], cells, strict=True)
                table[-1] = [" ".join(f"{a} {b}".split()) for a, b in joined]
    return table
