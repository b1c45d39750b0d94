"""``txblocks draw``: every example spec as a Mermaid flowchart that names what each layer runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import txblocks
from txblocks.cli import main
from txblocks.draw import layer_groups, mermaid

SPECS = sorted((Path(__file__).resolve().parents[1] / "examples" / "specs").glob("*.yaml"))
NODE = re.compile(r"^(?:subgraph\s+)?([A-Za-z_]\w*)\s*(?:\[|\()")
EDGE = re.compile(r"^([A-Za-z_]\w*)\s+(?:-->|-\.|--|~~~).*?\s([A-Za-z_]\w*)$")


def _unquoted(text: str) -> str:
    return re.sub(r'"[^"\n]*"', '""', text)


def check_syntax(text: str) -> set[str]:
    """What a simple check can tell of Mermaid syntax; return the node and subgraph ids."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[0] == "flowchart TB"
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in _unquoted(text):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack and stack.pop() == pairs[char], f"unbalanced {char!r}"
    assert not stack, f"unclosed {stack}"
    assert text.count('"') % 2 == 0
    opened = sum(line.startswith("subgraph ") for line in lines)
    assert opened == sum(line == "end" for line in lines)
    ids: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line in ("end", "direction TB"):
            continue
        edge = EDGE.match(_unquoted(line))
        if edge:
            edges.append(edge.groups())
            continue
        node = NODE.match(line)
        assert node, f"neither a node, a subgraph nor an edge: {line!r}"
        ids.append(node.group(1))
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"node ids defined twice: {duplicates}"
    assert "end" not in ids
    for a, b in edges:
        assert a in ids and b in ids, f"edge {a} -> {b} to an undefined node"
    return set(ids)


def subgraph(text: str, node_id: str) -> str:
    """The lines of subgraph ``node_id``, nested subgraphs included."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.strip().startswith(f"subgraph {node_id}["))
    depth = 0
    for i in range(start, len(lines)):
        stripped = lines[i].strip()
        depth += stripped.startswith("subgraph ")
        depth -= stripped == "end"
        if depth == 0:
            return "\n".join(lines[start:i + 1])
    raise AssertionError(f"subgraph {node_id} is not closed")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_example_spec_draws(path: Path) -> None:
    spec = txblocks.load_spec(path)
    text = mermaid(spec)
    ids = check_syntax(text)
    assert "head" in ids
    groups = layer_groups(spec)
    for stack, n_layers in spec.stacks.items():
        mine = [g for g in groups if g.stack == stack]
        assert sorted(i for g in mine for i in g.layers) == list(range(n_layers))
        for g, group in enumerate(mine):
            body = subgraph(text, f"{stack}_g{g}")
            block = group.block
            for name in (block.attention.mask.type, block.attention.kernel.type, block.ffn.type,
                         block.norm.type, block.layout):
                assert name in body, f"{stack} group {g} does not name {name!r}"


def test_an_override_is_a_group_of_its_own() -> None:
    spec = txblocks.load_spec({
        "arch": "decoder", "vocab_size": 64, "d_model": 32, "n_layers": 4, "n_heads": 4,
        "layers": [{"select": "odd", "attention": {"mask": {"type": "sliding_window", "window": 8}},
                    "ffn": {"type": "glu", "activation": "silu"}}],
    })
    text = mermaid(spec)
    check_syntax(text)
    plain, override = subgraph(text, "decoder_g0"), subgraph(text, "decoder_g1")
    assert "layers 0, 2" in plain and "causal" in plain and "mlp" in plain
    assert "sliding_window(window 8)" not in plain
    assert "layers 1, 3" in override and "override layers[0]" in override
    assert "sliding_window(window 8)" in override and "glu(activation silu)" in override
    assert "decoder_g2" not in text


def test_seq2seq_draws_both_stacks_and_cross_attention() -> None:
    text = mermaid(txblocks.load_spec(Path(SPECS[0]).with_name("t5-small.yaml")))
    ids = check_syntax(text)
    assert {"encoder", "decoder", "decoder_g0_cross", "encoder_input", "decoder_input"} <= ids
    assert "encoder_final_norm -. \"keys, values\" .-> decoder_g0_cross" in text
    assert 'position -. "attention bias" .-> encoder_g0_attn' in text
    assert "mask: none" in subgraph(text, "encoder") and "mask: causal" in subgraph(text, "decoder")


def test_vit_draws_patches_and_positions() -> None:
    text = mermaid(txblocks.load_spec(Path(SPECS[0]).with_name("vit-b16.yaml")))
    check_syntax(text)
    assert "patch embedding 16×16" in text and "196 patches × 768" in text
    assert "+ class token" in text and "classifier(n_classes 1000)" in text


def test_positions_show_where_they_act() -> None:
    llama = mermaid(txblocks.load_spec(Path(SPECS[0]).with_name("llama.yaml")))
    assert 'position -. "rotates q, k" .-> decoder_g0_attn' in llama
    gpt2 = mermaid(txblocks.load_spec(Path(SPECS[0]).with_name("gpt2.yaml")))
    assert 'position -. "added" .-> tokens_embed' in gpt2


def test_labels_escape_quotes_and_angle_brackets() -> None:
    from txblocks.draw import _text

    assert _text('a "b" <c>\nd') == '"a #quot;b#quot; #lt;c#gt;<br/>d"'


def test_cli_draw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = Path(SPECS[0]).with_name("mixtral.yaml")
    assert main(["draw", str(path)]) == 0
    assert capsys.readouterr().out == mermaid(txblocks.load_spec(path))
    assert main(["draw", "--fence", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("```mermaid\nflowchart TB\n") and out.endswith("```\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: decoder\nd_model: 8\n")
    assert main(["draw", str(bad)]) == 1
    assert "n_layers: required field is missing" in capsys.readouterr().err


@pytest.mark.parametrize(("block", "edges"), [
    ({"layout": "pre_norm"}, ["norm0 attn", "attn add0", "add0 norm1", "norm1 ffn"]),
    ({"layout": "post_norm"}, ["attn add0", "add0 norm0", "norm0 ffn", "add1 norm1"]),
    ({"layout": "reordered_norm"}, ["attn norm0", "norm0 add0", "add0 ffn", "ffn norm1"]),
    ({"layout": "parallel", "shared_norm": True}, ["norm attn", "norm ffn", "attn add", "ffn add"]),
    ({"layout": "parallel"}, ["norm0 attn", "norm1 ffn", "attn add", "ffn add"]),
    ({"post_attention_norm": True, "post_ffn_norm": True},
     ["norm0 attn", "attn post_norm0", "post_norm0 add0", "ffn post_norm1", "post_norm1 add1"]),
])
def test_the_layout_places_the_norms(block: dict, edges: list[str]) -> None:
    spec = txblocks.load_spec({"arch": "decoder", "vocab_size": 64, "d_model": 32, "n_layers": 2,
                               "n_heads": 4, "block": block})
    text = mermaid(spec)
    check_syntax(text)
    for edge in edges:
        a, b = edge.split()
        assert f"decoder_g0_{a} --> decoder_g0_{b}" in text, edge


def test_embedding_width_projections_and_shared_layers() -> None:
    spec = txblocks.load_spec({
        "arch": "decoder", "vocab_size": 64, "d_model": 32, "n_layers": 4, "n_heads": 4,
        "embedding": {"width": 16, "project_out": True}, "share_layers": {"groups": 2},
    })
    text = mermaid(spec)
    check_syntax(text)
    assert "token embedding 64 × 16" in text and "tokens_embed --> tokens_embed_project" in text
    assert 'tokens_embed_project["projection 16 → 32"]' in text
    assert 'project_out["projection 32 → 16"]' in text and "project_out --> head" in text
    assert "parameters shared by each run of 2" in text
