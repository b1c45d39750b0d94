"""The overview page: README.md as it is, its links pointed at the site's pages."""

from __future__ import annotations

import re

__all__ = ["render"]

LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _target(path: str) -> str | None:
    """Where a README link goes on the site (relative to the overview page), or None."""
    if path.startswith(("http://", "https://", "#", "mailto:")):
        return path
    if path.startswith("docs/") and path.split("#")[0].endswith(".md"):
        return path.removeprefix("docs/")
    if path.startswith("examples/specs/") and path.endswith((".yaml", ".yml")):
        return "examples.md#" + path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if path.rstrip("/") == "examples/specs":
        return "examples.md"
    if path.startswith("schemas/"):
        return "reference/spec.md"
    return None  # a source file or folder: the site does not hold it


def render(text: str) -> str:
    """README Markdown with site links; links to repository files become plain text."""

    def replace(match: re.Match[str]) -> str:
        label, path = match.groups()
        target = _target(path)
        if target is not None:
            return f"[{label}]({target})"
        return label if label.startswith("`") else f"`{label}`"

    body = LINK.sub(replace, text)
    title, _, rest = body.partition("\n")
    note = ('!!! note "The README"\n    This page is the repository\'s README.md. The field tables '
            "of the [spec reference](reference/spec.md) and the "
            "[component catalogue](reference/components.md) are generated from the code.\n")
    return f"{title}\n\n{note}{rest}"
