"""A spec's architecture as a Mermaid flowchart (``txblocks draw SPEC``).

Only the validated spec is read; no module is built. Layers whose blocks come out equal
(after the per-layer overrides) are drawn once, as one group labelled with their indices,
so an override shows as a group of its own::

    print(mermaid(load_spec("examples/specs/switch-base.yaml")))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from txblocks.spec.models import AttentionSpec, BlockSpec, ModelSpec, Seq2SeqSpec, VitSpec

__all__ = ["LayerGroup", "component", "layer_groups", "mermaid"]

#: Where the built-in positional schemes act; another scheme (a plugin's) is drawn as
#: acting on attention, labelled with its name only.
POSITION_ROLES: dict[str, str] = {
    "none": "none", "learned": "added", "sinusoidal": "added",
    "rope": "rotates q, k", "alibi": "attention bias", "relative_bias": "attention bias",
}


@dataclass(frozen=True)
class LayerGroup:
    """Layers of one stack whose blocks are equal once the overrides are applied."""

    stack: str
    layers: tuple[int, ...]
    block: BlockSpec
    overrides: tuple[int, ...]  # indices into ``spec.layers`` that touch these layers
    cross_attention: AttentionSpec | None = None  # seq2seq decoder layers only


def layer_groups(spec: ModelSpec) -> list[LayerGroup]:
    """Every stack's layers grouped by their effective block, in order of first layer."""
    groups: list[LayerGroup] = []
    for stack, n_layers in spec.stacks.items():
        found: dict[str, list[Any]] = {}
        for i in range(n_layers):
            block = spec.block_for(i, stack)
            cross = (spec.cross_attention_for(i)
                     if isinstance(spec, Seq2SeqSpec) and stack == "decoder" else None)
            overrides = tuple(k for k, o in enumerate(spec.layers)
                              if o.stack in (stack, "both") and o.selects(i, n_layers))
            key = repr((block.model_dump(mode="json"),
                        cross.model_dump(mode="json") if cross is not None else None, overrides))
            if key not in found:
                found[key] = [[], block, overrides, cross]
            found[key][0].append(i)
        groups += [LayerGroup(stack, tuple(ix), b, o, c) for ix, b, o, c in found.values()]
    return groups


def component(config: Any) -> str:
    """``moe(experts 8, top_k 2, expert glu(activation silu))``: the type and every
    parameter that differs from its default."""
    return _format(config.model_dump(mode="json", exclude_defaults=True))


def _format(value: Any) -> str:
    if isinstance(value, dict) and "type" in value:
        params = ", ".join(f"{k} {_format(v)}" for k, v in value.items() if k != "type")
        return f"{value['type']}({params})" if params else str(value["type"])
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_format(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if value is None:
        return "null"
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _layers_label(layers: tuple[int, ...]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    steps = {b - a for a, b in zip(layers, layers[1:])}
    if steps == {1}:
        return f"layers {layers[0]}–{layers[-1]}"
    if len(steps) == 1 and len(layers) > 3:
        return f"layers {layers[0]}, {layers[1]}, …, {layers[-1]} (every {steps.pop()})"
    return "layers " + ", ".join(map(str, layers))


def _text(label: str) -> str:
    """A quoted Mermaid label: quotes and angle brackets as entities, lines as <br/>."""
    escaped = label.replace("&", "#amp;").replace('"', "#quot;")
    escaped = escaped.replace("<", "#lt;").replace(">", "#gt;")
    return '"' + escaped.replace("\n", "<br/>") + '"'


class _Chart:
    """Lines of a flowchart, with a check that every node id is defined once."""

    def __init__(self) -> None:
        self.lines = ["flowchart TB"]
        self.ids: set[str] = set()
        self.depth = 1

    def _new(self, node_id: str) -> str:
        if node_id in self.ids:
            raise ValueError(f"node id {node_id!r} drawn twice")  # a bug in this module
        self.ids.add(node_id)
        return node_id

    def node(self, node_id: str, label: str, shape: str = "[]") -> str:
        """``shape``: ``[]`` box, ``(())`` circle, ``([])`` stadium, ``[[]]`` subroutine."""
        half = len(shape) // 2
        self.add(f"{self._new(node_id)}{shape[:half]}{_text(label)}{shape[half:]}")
        return node_id

    def add(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def edge(self, a: str, b: str, label: str = "", dotted: bool = False) -> None:
        arrow = ("-. " + _text(label) + " .->" if label else "-.->") if dotted else (
            "-- " + _text(label) + " -->" if label else "-->")
        self.add(f"{a} {arrow} {b}")

    def subgraph(self, node_id: str, label: str) -> _Group:
        return _Group(self, self._new(node_id), label)


class _Group:
    def __init__(self, chart: _Chart, node_id: str, label: str) -> None:
        self.chart, self.node_id, self.label = chart, node_id, label

    def __enter__(self) -> str:
        self.chart.add(f"subgraph {self.node_id}[{_text(self.label)}]")
        self.chart.depth += 1
        self.chart.add("direction TB")
        return self.node_id

    def __exit__(self, *exc: object) -> None:
        self.chart.depth -= 1
        self.chart.add("end")


def _attention_label(title: str, attention: AttentionSpec, spec: ModelSpec,
                     mask: bool = True) -> str:
    heads = f"{spec.n_heads} heads" + (
        f", {spec.kv_heads} kv heads" if spec.kv_heads != spec.n_heads else "")
    lines = [title, f"kernel: {component(attention.kernel)}"]
    if mask:
        lines.append(f"mask: {component(attention.mask)}")
    lines.append(f"{heads}, head_dim {spec.head_size}")
    extras = [f"{k} {_format(v)}" for k, v in attention.model_dump(
        mode="json", exclude_defaults=True, exclude={"kernel", "mask"}).items() if v is not None]
    if extras:
        lines.append(", ".join(extras))
    return "\n".join(lines)


def _block(chart: _Chart, prefix: str, group: LayerGroup, spec: ModelSpec) -> Iterator[str]:
    """Draw one group's block; yield the ids of its self-attention and cross-attention.

    Each branch (attention, cross-attention, ffn) ends in a residual add (a circle); where
    the norms sit follows the layout: pre_norm norm → f → +, post_norm f → + → norm,
    reordered_norm f → norm → +, parallel one + over every branch. Sandwich norms
    (post_attention_norm, post_ffn_norm) follow their branch.
    """
    block = group.block
    norm = f"norm: {component(block.norm)}"
    attn = chart.node(f"{prefix}_attn", _attention_label("self-attention", block.attention, spec))
    yield attn
    parts = [attn]
    if group.cross_attention is not None:
        cross = chart.node(f"{prefix}_cross", _attention_label(
            "cross-attention", group.cross_attention, spec, mask=False))
        yield cross
        parts.append(cross)
    parts.append(chart.node(f"{prefix}_ffn", f"ffn: {component(block.ffn)}"))
    sandwich = [block.post_attention_norm] * (len(parts) - 1) + [block.post_ffn_norm]
    ends = []  # the last node of each branch before its residual add
    for k, part in enumerate(parts):
        end = part
        if block.layout == "reordered_norm":
            end = chart.node(f"{prefix}_norm{k}", norm)
            chart.edge(part, end)
        if sandwich[k]:
            post = chart.node(f"{prefix}_post_norm{k}", f"post-{norm}")
            chart.edge(end, post)
            end = post
        ends.append(end)
    if block.layout == "parallel":
        add = chart.node(f"{prefix}_add", "+", "(())")
        shared = chart.node(f"{prefix}_norm", norm) if block.shared_norm else None
        for k, (part, end) in enumerate(zip(parts, ends)):
            chart.edge(shared or chart.node(f"{prefix}_norm{k}", norm), part)
            chart.edge(end, add)
        return
    previous = None
    for k, (part, end) in enumerate(zip(parts, ends)):
        first = part
        if block.layout not in ("post_norm", "reordered_norm"):  # pre_norm
            first = chart.node(f"{prefix}_norm{k}", norm)
            chart.edge(first, part)
        add = chart.node(f"{prefix}_add{k}", "+", "(())")
        chart.edge(end, add)
        last = add
        if block.layout == "post_norm":
            last = chart.node(f"{prefix}_norm{k}", norm)
            chart.edge(add, last)
        if previous is not None:
            chart.edge(previous, first)
        previous = last


def _stack(chart: _Chart, spec: ModelSpec, stack: str, groups: list[LayerGroup],
           position_targets: list[str]) -> tuple[str, list[str]]:
    """Draw a stack and its groups; return its id and its cross-attention node ids."""
    crosses: list[str] = []
    n_layers = spec.stacks[stack]  # type: ignore[index]
    label = f"{stack}: {n_layers} layers"
    if spec.share_layers is not None:
        size = n_layers // spec.share_layers.groups
        label += f" · parameters shared by each run of {size}" if size > 1 else ""
    with chart.subgraph(stack, label) as stack_id:
        ids = []
        for g, group in enumerate(groups):
            label = f"{_layers_label(group.layers)} · {group.block.layout}"
            if group.overrides:
                label += " · override " + ", ".join(f"layers[{k}]" for k in group.overrides)
            if group.block.dropout:
                label += f" · dropout {group.block.dropout}"
            with chart.subgraph(f"{stack}_g{g}", label) as group_id:
                ids.append(group_id)
                attention, *cross = _block(chart, group_id, group, spec)
                position_targets.append(attention)
                crosses += cross
        for a, b in zip(ids, ids[1:]):
            chart.add(f"{a} ~~~ {b}")
    return stack_id, crosses


def _embeddings(chart: _Chart, spec: ModelSpec, prefix: str, inputs: str) -> tuple[str, str]:
    """Draw an input and its embeddings; return the ids of the embedding and of the last node."""
    source = chart.node(f"{prefix}_input", f"{inputs} (B, T)")
    emb = getattr(spec, "embedding", None)
    width = emb.width if emb is not None and emb.width else spec.d_model
    lines = [f"token embedding {spec.vocab} × {width}"]
    if isinstance(spec, Seq2SeqSpec) and spec.shared_embeddings and prefix == "decoder":
        lines[0] += " (the encoder's)"
    if emb is not None and emb.scale is not None:
        lines.append(f"scale {emb.scale}")
    if emb is not None and emb.token_types:
        lines.append(f"+ token types ({emb.token_types})")
    table = embed = last = chart.node(f"{prefix}_embed", "\n".join(lines))
    chart.edge(source, table)
    projection = f"projection {width} → {spec.d_model}"
    if emb is not None and emb.width and emb.project_at == "tokens":  # positions added after it
        embed = last = chart.node(f"{prefix}_embed_project", projection)
        chart.edge(table, embed)
    if emb is not None and emb.norm is not None:
        norm = chart.node(f"{prefix}_embed_norm", f"embedding norm: {component(emb.norm)}")
        chart.edge(last, norm)
        last = norm
    if emb is not None and emb.width and emb.project_at == "end":
        project = chart.node(f"{prefix}_embed_project", projection)
        chart.edge(last, project)
        last = project
    return embed, last


def _vit_embeddings(chart: _Chart, spec: VitSpec) -> tuple[str, str]:
    (h, w), (ph, pw) = spec.image_hw, spec.patch_hw
    source = chart.node("pixels", f"pixel_values (B, {spec.channels}, {h}, {w})")
    patches = chart.node("patches", f"patch embedding {ph}×{pw}\n"
                         f"{(h // ph) * (w // pw)} patches × {spec.d_model}")
    extra = [f"patch positions: {spec.patch_position}"]
    if spec.class_token:
        extra.insert(0, "+ class token")
    if spec.register_tokens:
        extra.insert(1, f"+ {spec.register_tokens} register tokens")
    tokens = chart.node("patch_tokens", "\n".join(extra))
    chart.edge(source, patches)
    chart.edge(patches, tokens)
    return tokens, tokens


def mermaid(spec: ModelSpec) -> str:
    """The architecture of ``spec`` as Mermaid ``flowchart`` text.

    Drawn: the inputs and embeddings (ViT: the patches), the positional scheme and where it
    acts, each stack with one subgraph per group of equal layers (layout, norms, attention
    kernel and mask, cross-attention for seq2seq decoders, ffn), the final norms and the head.
    """
    chart = _Chart()
    groups = layer_groups(spec)
    by_stack = {s: [g for g in groups if g.stack == s] for s in spec.stacks}
    targets: list[str] = []
    position = spec.position.type
    role = POSITION_ROLES.get(position, "position")
    embeds: dict[str, str] = {}
    entries: dict[str, str] = {}
    if isinstance(spec, VitSpec):
        embeds["encoder"], entries["encoder"] = _vit_embeddings(chart, spec)
    else:
        for stack in spec.stacks:
            two = len(spec.stacks) > 1
            inputs = "decoder_input_ids" if stack == "decoder" and two else "input_ids"
            prefix = stack if two else "tokens"
            embeds[stack], entries[stack] = _embeddings(chart, spec, prefix, inputs)
    pos = ""
    if role != "none":
        pos = chart.node("position", f"position: {component(spec.position)}", "([])")
    if role == "added":
        for embed in embeds.values():
            chart.edge(pos, embed, "added", dotted=True)
    outputs: dict[str, str] = {}
    crosses: list[str] = []
    for stack in spec.stacks:
        stack_id, cross = _stack(chart, spec, stack, by_stack[stack], targets)
        crosses += cross
        chart.edge(entries[stack], stack_id)
        outputs[stack] = stack_id
        if spec.use_final_norm:
            outputs[stack] = chart.node(f"{stack}_final_norm",
                                        f"final norm: {component(spec.block.norm)}")
            chart.edge(stack_id, outputs[stack])
    if pos and role != "added":
        for target in targets:
            chart.edge(pos, target, role, dotted=True)
    for target in crosses:
        chart.edge(outputs["encoder"], target, "keys, values", dotted=True)
    last = outputs[list(spec.stacks)[-1]]
    emb = getattr(spec, "embedding", None)
    if emb is not None and emb.width and emb.project_out:
        project = chart.node("project_out", f"projection {spec.d_model} → {emb.width}")
        chart.edge(last, project)
        last = project
    head = chart.node("head", f"head: {component(spec.head)}" if spec.head is not None
                      else "hidden states (no head)", "[[]]")
    chart.edge(last, head)
    return "\n".join(chart.lines) + "\n"
