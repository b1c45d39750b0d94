"""The examples page: each spec of examples/specs/, its diagram (``txblocks draw``), its text."""

from __future__ import annotations

from pathlib import Path

__all__ = ["comment", "render"]


def comment(text: str) -> str:
    """The leading comment of a spec file, without the yaml-language-server line."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if "yaml-language-server" not in line:
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def render(paths: list[Path]) -> str:
    """The Markdown of the examples page: one section, one diagram per spec file."""
    import txblocks
    from txblocks.draw import mermaid

    out = [
        "# Example specs",
        "",
        "Every file in `examples/specs/` builds, runs and is a preset for `extends:`. Each is "
        "drawn here by `txblocks draw SPEC`: embeddings and positions, one group per set of "
        "equal layers (a per-layer override shows as a group of its own), norms, attention "
        "(kernel, mask), feed-forward network and head.",
        "",
        "| file | model | |",
        "|---|---|---|",
    ]
    specs = [(path, txblocks.load_spec(path)) for path in sorted(paths)]
    for path, spec in specs:
        out.append(f"| [`{path.name}`](#{path.stem}) | `{spec.name}` ({spec.arch}) | "
                   f"{comment(path.read_text()).split('. ')[0].split(': ')[0]} |")
    out.append("")
    for path, spec in specs:
        text = path.read_text()
        out += [
            f"## {path.name} {{ #{path.stem} }}",
            "",
            comment(text),
            "",
            f"```mermaid\n{mermaid(spec)}```",
            "",
            f'??? example "{path.name}"',
            "",
            "    ```yaml",
            *[f"    {line}" if line else "" for line in text.splitlines()],
            "    ```",
            "",
        ]
    return "\n".join(out)
