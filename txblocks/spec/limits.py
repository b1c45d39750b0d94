"""Size limits on specs, checked before anything is parsed in depth, validated or allocated.

Two kinds of limits:

* on the spec *as data* (:func:`check_text_size`, :func:`check_tree`): its bytes, its nodes
  once YAML aliases are expanded (an alias bomb is a few lines that expand to billions of
  nodes), its nesting depth. Past them, parsing or validating would hang, exhaust memory or
  overflow the stack.
* on the *model* a valid spec describes (:func:`size_problems`, run by validation): layers
  per stack, routed experts over all layers, and a lower bound on its parameters computed
  from the sizes alone (token table, attention projections, patch embedding). Past them no
  device could hold the model, and building would hang in Python loops or fail deep inside
  torch. The exact count, every component included, comes from a build on the meta device:
  :func:`txblocks.build.model_size`.

The limits are module constants, far above any real model, so that an ordinary spec never
meets them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from txblocks.errors import Problem, SpecError
from txblocks.spec.models import ModelSpec, Seq2SeqSpec, TextSpec, VitSpec

__all__ = [
    "MAX_DEPTH", "MAX_EXPERTS", "MAX_LAYERS", "MAX_MODEL_EXPERTS", "MAX_NODES", "MAX_PARAMS",
    "MAX_SEQ_LEN", "MAX_SPEC_BYTES", "check_text_size",
    "check_tree", "human_bytes", "min_params", "size_problems",
]

#: Bytes of spec text (a file, a string, a checkpoint's stored spec). Real specs are < 10 KB.
MAX_SPEC_BYTES = 1 << 20
#: Values in a spec (mappings, lists, scalars), counted with every YAML alias expanded.
MAX_NODES = 50_000
#: Nesting of mappings and lists. Real specs nest about 6 deep.
MAX_DEPTH = 64
#: Blocks per stack. The deepest published Transformers have about a thousand (DeepNet).
MAX_LAYERS = 4096
#: Positions (max_seq_len). The longest contexts in use are about ten million tokens.
MAX_SEQ_LEN = 1 << 30
#: Parameters implied by the sizes alone (10 trillion: 40 TB in float32).
MAX_PARAMS = 10**13
#: Routed experts of one Mixture of Experts. The most in use are 256 (DeepSeek-V3).
MAX_EXPERTS = 1024
#: Routed experts in a whole model, over all layers (DeepSeek-V3: 58 x 256 = 14,848). Each is
#: a module: even the meta build takes about half a millisecond per expert.
MAX_MODEL_EXPERTS = 16_384


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1000, like disk and memory vendors)."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} PB"


def check_text_size(n_bytes: int, source: str | None) -> None:
    """Refuse spec text over :data:`MAX_SPEC_BYTES` before it is read or parsed."""
    if n_bytes > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is {human_bytes(n_bytes)}, over the limit of "
                        f"{human_bytes(MAX_SPEC_BYTES)} (txblocks.spec.limits.MAX_SPEC_BYTES); "
                        "real specs are a few KB", source=source)


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    if isinstance(node, (list, tuple)):
        return list(node)
    return []


def check_tree(data: Any, source: str | None = None) -> None:
    """Refuse data too big to validate: over :data:`MAX_NODES` values with aliases expanded,
    nested deeper than :data:`MAX_DEPTH`, or containing itself (a recursive YAML alias).

    Shared subtrees (what a YAML alias makes) are measured once, so a bomb of a billion
    expanded nodes is refused after visiting its few dozen real ones. Iterative: no depth
    of input overflows the stack.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (nodes with aliases expanded, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            below = [sizes[id(c)] for c in _children(node)]
            nodes = 1 + sum(n for n, _ in below)
            depth = 1 + max((d for _, d in below), default=0)
            sizes[key] = (nodes, depth)
            if nodes > MAX_NODES:
                raise SpecError(f"the spec expands to over {MAX_NODES:,} values (YAML aliases "
                                "expanded); refusing to validate it "
                                "(txblocks.spec.limits.MAX_NODES)", source=source)
            if depth > MAX_DEPTH:
                raise SpecError(f"the spec nests deeper than {MAX_DEPTH} levels "
                                "(txblocks.spec.limits.MAX_DEPTH)", source=source)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError("the spec contains itself (a recursive YAML alias)", source=source)
        children = _children(node)
        if not children:
            sizes[key] = (1, 1)
            continue
        if len(on_path) >= MAX_DEPTH:
            raise SpecError(f"the spec nests deeper than {MAX_DEPTH} levels "
                            "(txblocks.spec.limits.MAX_DEPTH)", source=source)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children)


def _attention_params(spec: ModelSpec) -> int:
    """q, k, v and output projections of one attention layer (biases left out)."""
    d, h, kv, hd = spec.d_model, spec.n_heads, spec.kv_heads, spec.head_size
    return 2 * d * h * hd + 2 * d * kv * hd


def _terms(spec: ModelSpec) -> dict[str, int]:
    """Parameters the sizes alone imply, by the spec field that drives each term."""
    blocks = {stack: _distinct_blocks(spec, n_layers) for stack, n_layers in spec.stacks.items()}
    layers = sum(blocks.values()) + (blocks["decoder"] if isinstance(spec, Seq2SeqSpec) else 0)
    terms = {"d_model": layers * _attention_params(spec)}  # + seq2seq cross-attention
    if isinstance(spec, TextSpec):
        terms["vocab_size"] = spec.vocab_size * spec.d_model
    if isinstance(spec, VitSpec):
        (h, w), (ph, pw) = spec.image_hw, spec.patch_hw
        patches = (h // ph) * (w // pw) if spec.patch_position != "none" else 0
        terms["patch_size"] = spec.channels * ph * pw * spec.d_model
        terms["image_size"] = patches * spec.d_model
    return terms


def _distinct_blocks(spec: ModelSpec, n_layers: int) -> int:
    """Blocks with parameters of their own in a stack of ``n_layers``: ``share_layers.groups``
    of them where layers share (ALBERT), else one per layer."""
    share = spec.share_layers
    return n_layers if share is None else min(share.groups, n_layers)


def min_params(spec: ModelSpec) -> int:
    """A lower bound on the parameters of ``spec``: what the sizes alone imply, whatever the
    components (token table, attention projections, ViT patch embedding and positions)."""
    return sum(_terms(spec).values())


def _experts(ffn: Any) -> int:
    experts = getattr(ffn, "experts", 0)
    return experts if isinstance(experts, int) else 0


def _model_experts(spec: ModelSpec) -> int:
    """Routed experts over all layers: the ``experts`` of each layer's ffn (0 for dense)."""
    if not _experts(spec.block.ffn) and not any(_experts(o.ffn) for o in spec.layers):
        return 0
    return sum(_experts(spec.block_for(i, stack).ffn)
               for stack, n_layers in spec.stacks.items() for i in range(n_layers))


def size_problems(spec: ModelSpec) -> Iterator[Problem]:
    """Layers over :data:`MAX_LAYERS`, positions over :data:`MAX_SEQ_LEN`, and a lower bound on
    the parameters over :data:`MAX_PARAMS`. Each message gives the parameter count and the
    float32 memory the spec implies."""
    terms = _terms(spec)
    params = sum(terms.values())
    implied = f"at least {params:,} parameters, {human_bytes(4 * params)} in float32"
    for stack, n_layers in spec.stacks.items():
        if n_layers > MAX_LAYERS:
            field = "decoder_layers" if stack == "decoder" and "encoder" in spec.stacks else (
                "n_layers")
            yield Problem(field, f"{n_layers:,} layers; txblocks builds at most {MAX_LAYERS:,} "
                          f"per stack (txblocks.spec.limits.MAX_LAYERS); the spec implies "
                          f"{implied}")
            return
    experts = _model_experts(spec)
    if experts > MAX_MODEL_EXPERTS:
        yield Problem("layers" if spec.layers else "block.ffn.experts", (
            f"the model has {experts:,} routed experts over its layers; txblocks builds at most "
            f"{MAX_MODEL_EXPERTS:,} (txblocks.spec.limits.MAX_MODEL_EXPERTS)"))
    for field in ("max_seq_len", "decoder_max_seq_len"):
        value = getattr(spec, field, None)
        if value is not None and value > MAX_SEQ_LEN:
            yield Problem(field, f"{value:,} positions; txblocks builds at most "
                          f"{MAX_SEQ_LEN:,} (txblocks.spec.limits.MAX_SEQ_LEN)")
    if params > MAX_PARAMS:
        field = max(terms, key=terms.__getitem__)
        yield Problem(field, f"the spec implies {implied}, over the limit of {MAX_PARAMS:,} "
                      "parameters (txblocks.spec.limits.MAX_PARAMS)")
