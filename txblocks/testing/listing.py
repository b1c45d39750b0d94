"""Reading what ``txblocks list`` printed, for tests that check a plugin is listed."""

from __future__ import annotations

__all__ = ["listed_rows"]


def listed_rows(out: str) -> list[list[str]]:
    """The rows of the table that ``txblocks list`` printed: ``[kind, name, owner,
    description]`` each, with cells that rich wrapped onto several lines joined again."""
    table: list[list[str]] = []
    for line in out.splitlines():
        if line.strip().startswith("│"):
            cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
            if cells[0] or not table:
                table.append(cells)
            else:
                table[-1] = [f"{a} {b}".strip() for a, b in zip(table[-1], cells, strict=True)]
    return table
