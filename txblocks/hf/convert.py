"""The conversion engine: find the family, map its config, copy weights, go back.

Every direction is checked whole, and fails with one
:class:`~txblocks.hf.family.HFConversionError` that lists every problem:

* ``spec_from_hf``: each option the family cannot map, plus each option it never read
  whose value differs from the config class's default.
* ``from_hf`` / ``to_hf``: weights (:mod:`txblocks.hf.weights`), nothing left over.
* ``to_hf``: the spec goes to an HF config and back; any difference that changes the
  numbers (:mod:`txblocks.hf.compare`) refuses the family.

Only ``to_hf`` imports ``transformers`` (it looks the classes up by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from txblocks.errors import Problem, RegistryError
from txblocks.hf.compare import differences
from txblocks.hf.family import GENERIC_IGNORED, ConfigView, HFConversionError, HFFamily, HFHead
from txblocks.hf.weights import copy_weights
from txblocks.registry import Registry
from txblocks.spec.models import ModelSpec

__all__ = ["HFOrigin", "builtin_families", "families", "from_hf", "spec_from_hf", "to_hf"]

#: Config keys carried from the source model back by ``to_hf`` (they never change numbers).
CARRIED = (
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
)  # fmt: skip


@dataclass(frozen=True)
class HFOrigin:
    """Where a model made by :func:`from_hf` came from (``model.hf_origin``).

    ``to_hf`` tries this family first and carries ``config`` (token ids) back.
    """

    family: str
    hf_class: str
    config: dict[str, Any] = field(default_factory=dict)


def builtin_families() -> tuple[HFFamily, ...]:
    """The families shipped with txblocks, in the order ``to_hf`` tries them."""
    from txblocks.hf import (
        bart, bert, gpt2, group_decoders_a, group_decoders_b, group_others, llama, mixtral, t5,
        vit,
    )  # fmt: skip

    return (
        gpt2.GPT2, bert.BERT, bert.ROBERTA, llama.LLAMA, llama.MISTRAL, llama.QWEN2,
        mixtral.MIXTRAL, t5.T5, t5.T5_ENCODER, bart.BART, vit.VIT,
        *group_decoders_a.FAMILIES, *group_decoders_b.FAMILIES, *group_others.FAMILIES,
    )  # fmt: skip


def families(registry: Registry | None = None) -> dict[str, HFFamily]:
    """Every family by name: the built-ins, then the registry's ``hf_family`` entries.

    A plugin adds one in its ``txblocks_register`` hook with
    ``registry.add("hf_family", "mixtral", MIXTRAL)`` (an :class:`HFFamily` is its own
    factory).

    Two built-ins may share a ``model_type`` when they convert different classes (``t5``:
    the encoder–decoder classes and ``T5EncoderModel``).

    Raises:
        RegistryError: a factory that gives no :class:`HFFamily` of its entry's name, or
            two families with one name or ``model_type`` (naming both owners).
    """
    if registry is None:
        from txblocks.plugins import default_registry

        registry = default_registry()
    found = {f.name: (f, "txblocks (built-in)") for f in builtin_families()}
    for entry in registry.entries("hf_family"):
        family = entry.factory(entry.config())
        if not isinstance(family, HFFamily) or family.name != entry.name:
            got = getattr(family, "name", type(family).__name__)
            raise RegistryError(
                f"hf_family {entry.name!r} of {entry.owner}: the factory must return an "
                f"HFFamily named {entry.name!r}, got {got!r}"
            )
        for other, owner in found.values():
            if family.name == other.name or family.model_type == other.model_type:
                raise RegistryError(
                    f"hf_family {family.name!r} (model_type {family.model_type!r}) is "
                    f"registered twice: by {owner} and by {entry.owner}"
                )
        found[family.name] = (family, str(entry.owner))
    return {name: family for name, (family, _) in found.items()}


def _family_of(config: Any, registry: Registry | None, hf_class: str | None = None) -> HFFamily:
    """The family of ``config``'s model type; of those, the one that maps ``hf_class`` (else
    a class of ``config.architectures``), else the first."""
    model_type = getattr(config, "model_type", None)
    known = families(registry)
    found = [f for f in known.values() if f.model_type == model_type]
    classes = [hf_class] if hf_class else list(getattr(config, "architectures", None) or [])
    for family in found:
        if any(family.head(c) for c in classes):
            return family
    if found:
        return found[0]
    supported = ", ".join(sorted({f.model_type for f in known.values()}))
    raise HFConversionError(
        f"no txblocks mapping for {type(config).__name__}",
        [Problem("model_type", f"{model_type!r}; supported: {supported}")],
    )


def _head_of(family: HFFamily, config: Any, hf_class: str | None) -> HFHead:
    if hf_class is None:
        architectures = getattr(config, "architectures", None) or []
        hf_class = next((a for a in architectures if family.head(a)), family.heads[0].hf_class)
    head = family.head(hf_class)
    if head is None:
        supported = ", ".join(h.hf_class for h in family.heads)
        raise HFConversionError(
            f"no txblocks mapping for the class {hf_class}",
            [Problem("class", f"{hf_class}; supported {family.name} classes: {supported}")],
        )
    return head


def _unread(family: HFFamily, config: Any, read: set[str]) -> list[Problem]:
    """Options the mapping never looked at whose value is not the class default."""
    try:
        defaults = type(config)().to_dict()
    except Exception:  # noqa: BLE001 - a config class that needs arguments: nothing to compare
        defaults = {}
    problems = []
    for key, value in config.to_dict().items():
        skip = key in read or key in GENERIC_IGNORED or key in family.ignored
        # a key the class does not declare is not read by its model either
        if skip or key not in defaults or value == defaults[key]:
            continue
        problems.append(Problem(key, (
            f"{value!r} (default {defaults[key]!r}): an option the txblocks mapping of "
            f"{family.name} does not handle"
        )))  # fmt: skip
    return problems


def _spec_data(
    family: HFFamily, head: HFHead, config: Any, model: Any = None
) -> tuple[dict[str, Any], list[Problem]]:
    view = ConfigView(config, model)
    data = family.spec(view)
    data["head"] = head.spec(view)
    data.setdefault("name", getattr(config, "name_or_path", "") or family.name)
    return data, view.problems + _unread(family, config, view.read)


def _load(data: dict[str, Any], registry: Registry | None) -> ModelSpec:
    from txblocks.spec.io import load_spec

    return load_spec(data, registry=registry)


def spec_from_hf(
    source: Any, *, hf_class: str | None = None, registry: Registry | None = None
) -> ModelSpec:
    """The txblocks spec of a ``transformers`` model or config.

    Args:
        source: a ``transformers`` model (its class picks the head) or config.
        hf_class: for a config, the model class whose head to map (``"GPT2LMHeadModel"``);
            default the first supported entry of ``config.architectures``, else the base
            model (no head).
        registry: components and plugin families; default :func:`txblocks.default_registry`.

    Raises:
        HFConversionError: the family or class is not supported, or the config uses options
            the mapping does not support (every one listed).
    """
    model = source if isinstance(source, nn.Module) else None
    config = source.config if model is not None else source
    if model is not None:
        hf_class = type(source).__name__
    family = _family_of(config, registry, hf_class)
    head = _head_of(family, config, hf_class)
    data, problems = _spec_data(family, head, config, model)
    if problems:
        what = f"cannot convert {type(config).__name__} ({head.hf_class}) to txblocks"
        raise HFConversionError(f"{what}: unsupported options", problems)
    return _load(data, registry)


def from_hf(model: nn.Module, *, registry: Registry | None = None) -> nn.Module:
    """A txblocks model with the spec and weights of a ``transformers`` model.

    The head follows the class (``GPT2LMHeadModel`` -> ``lm``, ``BertModel`` -> none; its
    pooler is skipped). The result is on the source's device and dtype, in eval mode;
    ``.spec`` holds its spec and ``.hf_origin`` (:class:`HFOrigin`) its source.

    Raises:
        HFConversionError: unsupported family, class or options (all listed), or weights
            that do not correspond.
    """
    from txblocks.build import build

    config = model.config
    family = _family_of(config, registry, type(model).__name__)
    head = _head_of(family, config, type(model).__name__)
    spec = spec_from_hf(model, registry=registry)
    first = next(model.parameters())
    tx = build(spec, device=first.device, dtype=first.dtype, registry=registry)
    copy_weights(tx, model, family, head, to_hf=False)
    tx.eval()
    carried = {k: getattr(config, k) for k in CARRIED if getattr(config, k, None) is not None}
    tx.hf_origin = HFOrigin(family.name, head.hf_class, carried)
    return tx


def _hf_config(family: HFFamily, head: HFHead, spec: ModelSpec, origin: Any) -> Any:
    import transformers

    kwargs: dict[str, Any] = {}
    if isinstance(origin, HFOrigin) and origin.family == family.name:
        kwargs.update(origin.config)
    kwargs.update(family.config(spec))
    kwargs.update(head.config(spec.model_dump(mode="json")["head"]))
    return getattr(transformers, family.config_class)(**kwargs)


def _new_hf(head: HFHead, config: Any, spec: ModelSpec, *, meta: bool = False) -> Any:
    """The HF model of ``head``'s class for ``config``, prepared for ``spec``'s head."""
    import torch
    import transformers

    cls = getattr(transformers, head.hf_class)
    if meta:
        with torch.device("meta"):
            hf = cls(config, **head.init_kwargs)
    else:
        hf = cls(config, **head.init_kwargs)
    head.prepare(hf, spec.model_dump(mode="json")["head"])
    return hf


def _why_not(
    family: HFFamily, spec: ModelSpec, origin: Any, registry: Registry | None
) -> tuple[HFHead | None, Any, list[Problem]]:
    """The head entry and HF config of ``spec`` in ``family``, and why they do not fit."""
    if spec.arch != family.arch:
        why = f"{spec.arch}; {family.name} converts {family.arch} models"
        return None, None, [Problem("arch", why)]
    head_type = getattr(spec.head, "type", None)
    head = next((h for h in family.heads if h.head_type == head_type), None)
    if head is None:
        offered = ", ".join(f"{h.head_type or 'null'} ({h.hf_class})" for h in family.heads)
        why = f"{head_type or 'null'}; {family.name} offers {offered}"
        return None, None, [Problem("head", why)]
    try:
        config = _hf_config(family, head, spec, origin)
        skeleton = lambda: _new_hf(head, config, spec, meta=True)  # noqa: E731 - built if read
        data, problems = _spec_data(family, head, config, skeleton)
        if problems:
            return head, config, problems
        back = _load(data, registry)
    # transformers' configs validate with huggingface_hub's strict dataclasses, whose errors
    # are neither ValueError nor TypeError: any failure here means "this family cannot".
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return head, None, [Problem("", f"no {family.config_class} fits: {first}")]
    return head, config, differences(spec, back, family.config_class)


def to_hf(model: nn.Module, *, family: str | None = None, registry: Registry | None = None) -> Any:
    """The ``transformers`` model equal to a txblocks model, weights copied.

    Args:
        model: a txblocks model with ``.spec`` (built, or from :func:`from_hf`).
        family: the family to convert to (``"mistral"``); default the one the model came
            from (``model.hf_origin``), then the first family that can express the spec.
        registry: for plugin families; default :func:`txblocks.default_registry`.

    Returns:
        The HF model (its class from the head: ``lm`` -> ``...ForCausalLM``), on the
        model's device and dtype, in eval mode.

    Raises:
        HFConversionError: no family can express the spec; each one's reasons are listed.
    """
    chosen, head, config = target_family(model, family, registry, action="to_hf")
    hf = _new_hf(head, config, model.spec)
    parameter = next(model.parameters())
    hf.to(device=parameter.device, dtype=parameter.dtype)
    copy_weights(model, hf, chosen, head, to_hf=True)
    return hf.eval()


def target_family(
    model: nn.Module, family: str | None, registry: Registry | None, *, action: str
) -> tuple[HFFamily, HFHead, Any]:
    """The family, head entry and HF config that ``model`` converts to: ``family``, else the
    one it came from (``model.hf_origin``), then the first that can express its spec.

    Raises:
        HFConversionError: no ``.spec``, an unknown ``family``, or no family fits (each
            one's reasons listed); ``action`` names the caller in the message.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        problem = Problem("spec", "the model has no .spec")
        raise HFConversionError(f"{action} needs a txblocks model", [problem])
    known = families(registry)
    origin = getattr(model, "hf_origin", None)
    if family is not None and family not in known:
        problem = Problem("family", f"{family!r}; known: {', '.join(known)}")
        raise HFConversionError("unknown family", [problem])
    if family is not None:
        order = [known[family]]
    else:
        first = origin.family if isinstance(origin, HFOrigin) else None
        order = sorted(known.values(), key=lambda f: f.name != first)
    reasons: list[Problem] = []
    for candidate in order:
        head, config, problems = _why_not(candidate, spec, origin, registry)
        if head is not None and not problems:
            return candidate, head, config
        if len(problems) > 6:
            problems = [*problems[:6], Problem("", f"... and {len(problems) - 6} more")]
        reasons += [
            Problem(f"{candidate.name}: {p.path}".rstrip(": "), p.message) for p in problems
        ]
    raise HFConversionError(f"no transformers family can express the spec {spec.name!r}", reasons)
