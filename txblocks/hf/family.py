"""How a Hugging Face family is described: config mapping, weight rules, heads.

A family is data: an :class:`HFFamily` names its ``transformers`` config class, a function
from config to spec and its inverse, the :class:`~txblocks.hf.rules.Rule` list of the
base model, and one :class:`HFHead` per supported model class. Nothing here imports
``transformers``: configs are read through a :class:`ConfigView`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from txblocks.errors import Problem
from txblocks.hf.rules import Rule

__all__ = [
    "GENERIC_IGNORED",
    "ConfigView",
    "HFConversionError",
    "HFFamily",
    "HFHead",
    "activation",
    "activation_name",
    "causal_lm_family",
    "ffn_hidden",
    "hf_activation",
    "lm_head",
]


class HFConversionError(ValueError):
    """A model or config cannot be converted; ``problems`` lists every reason."""

    def __init__(self, what: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"{what} ({n} problem{'s' if n != 1 else ''}):"]
        super().__init__("\n".join([*lines, *(f"  {p}" for p in self.problems)]))


def _no_head(view: ConfigView) -> dict[str, Any] | None:
    return None


def _no_config(head: dict[str, Any] | None) -> dict[str, Any]:
    return {}


def _no_prepare(model: Any, head: dict[str, Any] | None) -> None:
    return None


@dataclass(frozen=True)
class HFHead:
    """One ``transformers`` model class of a family and the txblocks head it maps to.

    Args:
        hf_class: the class name in ``transformers`` (``GPT2LMHeadModel``).
        head_type: the txblocks head type (``lm``); None for hidden states only.
        spec: config view -> the spec's ``head`` (a dict, or None).
        config: the spec's head (a dict, or None) -> the HF config fields it sets.
        weights: rules for the head's parameters, with full HF names.
        ignore: full-name prefixes of HF parameters with no txblocks counterpart
            (``BertModel``'s pooler), skipped on purpose.
        init_kwargs: extra constructor arguments for ``to_hf`` (``add_pooling_layer=False``).
        prepare: ``(hf_model, spec head) -> None``, run by ``to_hf`` on the new HF model
            before weights are copied, for what the config cannot say (T5: an LM head
            untied from the shared embeddings, as ``from_pretrained`` leaves T5 v1.1).
            When ``to_hf`` checks the spec, ``spec`` sees the prepared model (built on the
            ``meta`` device) as ``view.model``.
    """

    hf_class: str
    head_type: str | None
    spec: Callable[[ConfigView], dict[str, Any] | None] = _no_head
    config: Callable[[dict[str, Any] | None], dict[str, Any]] = _no_config
    weights: tuple[Rule, ...] = ()
    ignore: tuple[str, ...] = ()
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    prepare: Callable[[Any, dict[str, Any] | None], None] = _no_prepare


@dataclass(frozen=True)
class HFFamily:
    """A ``transformers`` family: its config class, spec mapping and weight rules.

    Args:
        name: lowercase (``gpt2``); also the registry name of a plugin family.
        arch: the spec ``arch`` it produces (``decoder``, ``encoder``, ``seq2seq``, ``vit``).
        model_type: the ``config.model_type`` it converts.
        config_class: the config class name in ``transformers``.
        spec: config view -> the spec without ``head``, a dict for
            :func:`txblocks.load_spec`. Report what cannot be mapped with
            ``view.unsupported(key, why)``.
        config: spec -> HF config keyword arguments. Best effort: ``to_hf`` maps the result
            back through ``spec`` and refuses the model wherever the two specs differ.
        weights: rules for the base model's parameters (names without its
            ``base_model_prefix``).
        heads: the supported model classes, the base model (no head) first.
        ignored: config keys that never change the numbers, with the reason.
    """

    name: str
    arch: str
    model_type: str
    config_class: str
    spec: Callable[[ConfigView], dict[str, Any]]
    config: Callable[[Any], dict[str, Any]]
    weights: tuple[Rule, ...]
    heads: tuple[HFHead, ...]
    ignored: Mapping[str, str] = field(default_factory=dict)

    def head(self, hf_class: str) -> HFHead | None:
        """The entry of class ``hf_class``, or None."""
        return next((h for h in self.heads if h.hf_class == hf_class), None)

    def __call__(self, config: Any = None) -> HFFamily:
        """A family is its own registry factory: ``registry.add("hf_family", name, FAMILY)``."""
        return self


def lm_head(hf_class: str, *, bias: bool = False) -> HFHead:
    """A decoder's causal-LM class: ``lm_head`` (weight, and bias where ``bias``) as the
    txblocks ``lm`` head, tied to the token embeddings as ``tie_word_embeddings`` says."""
    p = "{p}" if bias else "weight"
    return HFHead(
        hf_class,
        "lm",
        spec=lambda c: {"type": "lm", "tie_embeddings": c.tie_word_embeddings, "bias": bias},
        config=lambda head: {"tie_word_embeddings": head["tie_embeddings"]},
        weights=(Rule(f"lm_head.{p}", f"head.proj.{p}"),),
    )


def causal_lm_family(
    name: str,
    prefix: str,
    spec: Callable[[ConfigView], dict[str, Any]],
    config: Callable[[Any], dict[str, Any]],
    weights: tuple[Rule, ...],
    *,
    lm_bias: bool = False,
    ignored: Mapping[str, str] | None = None,
) -> HFFamily:
    """A decoder family of ``model_type`` ``name`` whose classes are ``{prefix}Model`` and
    ``{prefix}ForCausalLM`` (:func:`lm_head`, with a bias where ``lm_bias``), configured
    by ``{prefix}Config``."""
    return HFFamily(
        name=name,
        arch="decoder",
        model_type=name,
        config_class=f"{prefix}Config",
        spec=spec,
        config=config,
        weights=weights,
        heads=(HFHead(f"{prefix}Model", None), lm_head(f"{prefix}ForCausalLM", bias=lm_bias)),
        ignored={} if ignored is None else ignored,
    )


#: Config keys that never change a forward's numbers (token ids, output switches, labels).
GENERIC_IGNORED = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "output_attentions",
    "return_dict", "dtype", "torch_dtype", "chunk_size_feed_forward", "id2label", "label2id",
    "problem_type", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "_name_or_path", "model_type", "tokenizer_class",
    "task_specific_params", "finetuning_task", "prefix", "torchscript", "tie_word_embeddings",
    "initializer_range",
})  # fmt: skip


class ConfigView:
    """Read access to an HF config that records which options a mapping looked at.

    ``view.n_embd`` reads the config, :meth:`get` reads with a default, :meth:`unsupported`
    records a problem. The engine then also reports every option the mapping never read
    whose value differs from the config class's default.

    :attr:`model` is the HF model being converted, where there is one, for what only its
    structure tells (which weights are tied); a mapping must work without it.
    """

    def __init__(self, config: Any, model: Any = None) -> None:
        self._config = config
        self._model = model
        self._aliases: Mapping[str, str] = getattr(type(config), "attribute_map", None) or {}
        self._read: set[str] = set()
        self._problems: list[Problem] = []

    @property
    def model(self) -> Any:
        """The HF model (``to_hf`` checks a skeleton on the ``meta`` device), or None.

        Given as a callable, it is built on first use.
        """
        if callable(self._model) and not isinstance(self._model, torch.nn.Module):
            self._model = self._model()
        return self._model

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        self._read.add(self._aliases.get(key, key))
        return getattr(self._config, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``config.key``, or ``default`` where the config has no such attribute."""
        self._read.add(self._aliases.get(key, key))
        return getattr(self._config, key, default)

    def unsupported(self, key: str, why: str) -> None:
        """Record that option ``key`` (with its current value) cannot be converted."""
        problem = Problem(key, f"{getattr(self._config, key, None)!r}: {why}")
        if problem not in self._problems:  # an option read by both the body and a head
            self._problems.append(problem)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    @property
    def read(self) -> set[str]:
        return set(self._read)


# HF activation -> txblocks activation (exactly, or up to float rounding: gelu_fast and
# gelu_new are the tanh formula written out).
_ACTIVATIONS = MappingProxyType({
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu",
})  # fmt: skip


def activation_name(name: Any) -> str | None:
    """The txblocks activation of an HF activation name, or None."""
    return _ACTIVATIONS.get(name) if isinstance(name, str) else None


def activation(view: ConfigView, key: str, *, value: Any = None) -> str:
    """The txblocks activation of option ``key`` (or of ``value``, derived from it); if
    none, a problem on ``key`` (and ``gelu``)."""
    name = view.get(key) if value is None else value
    found = activation_name(name)
    if found is not None:
        return found
    supported = ", ".join(_ACTIVATIONS)
    why = "no txblocks activation computes it" if value is None else (
        f"its activation {value!r} is not one txblocks computes")  # fmt: skip
    view.unsupported(key, f"{why}; supported: {supported}")
    return "gelu"


def hf_activation(spec_activation: Any, tanh_name: str = "gelu_pytorch_tanh") -> str | None:
    """The HF name of a txblocks activation config (None where HF has none)."""
    name = getattr(spec_activation, "type", spec_activation)
    names = {"gelu": "gelu", "gelu_tanh": tanh_name, "relu": "relu", "silu": "silu",
             "quick_gelu": "quick_gelu"}  # fmt: skip
    return names.get(name)


def ffn_hidden(ffn: Any, d_model: int) -> int | None:
    """The hidden width of an ffn config, its default resolved by building it on ``meta``."""
    hidden = getattr(ffn, "hidden", None)
    if hidden is not None:
        return int(hidden)
    try:
        with torch.device("meta"):
            module = ffn.build(d_model)
    except Exception:  # noqa: BLE001 - a plugin ffn we cannot inspect has no width to map
        return None
    return getattr(getattr(module, "down", None), "in_features", None)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def close(a: Any, b: Any) -> bool:
    """Equality; numbers (not booleans) compared to 1e-9 relative."""
    if _number(a) and _number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return bool(a == b)
