"""One call for a plugin author: build a registered component and run its kind's check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from txblocks.nn.dims import ModelDims
from txblocks.registry import ComponentConfig, Registry
from txblocks.testing.kernels import check_attention_kernel
from txblocks.testing.masks import check_mask_strategy
from txblocks.testing.modules import check_activation, check_ffn, check_norm
from txblocks.testing.positions import check_positional_scheme
from txblocks.testing.report import Report

__all__ = ["DEFAULT_DIMS", "check_component"]

#: The model the components are built for: small, with grouped K/V heads (and a 2x4 patch
#: grid, for the components of vision models).
DEFAULT_DIMS = ModelDims(
    d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=64, n_layers=2, vocab_size=64,
    grid=(2, 4),
)


def _attention(config: ComponentConfig, dims: ModelDims, options: dict[str, Any]) -> Report:
    return check_attention_kernel(config.build(), **options)


def _mask(config: ComponentConfig, dims: ModelDims, options: dict[str, Any]) -> Report:
    reference = options.pop("reference", None)
    return check_mask_strategy(config.build(), reference, **options)


def _position(config: ComponentConfig, dims: ModelDims, options: dict[str, Any]) -> Report:
    scheme = config.build(dims)
    defaults = {
        "head_dim": dims.head_dim, "n_heads": dims.n_heads, "n_kv_heads": dims.n_kv_heads,
        "d_model": dims.d_model, "max_position": dims.max_seq_len, "n_layers": dims.n_layers,
    }  # fmt: skip
    if getattr(scheme, "relative", None) is False:  # a scheme that says its bias is not 1-D relative
        defaults["relative"] = False
    return check_positional_scheme(scheme, **{**defaults, **options})


def _norm(config: ComponentConfig, dims: ModelDims, options: dict[str, Any]) -> Report:
    return check_norm(config.build(dims.d_model), dims.d_model, **options)


def _ffn(config: ComponentConfig, dims: ModelDims, options: dict[str, Any]) -> Report:
    return check_ffn(config.build(dims.d_model), dims.d_model, **options)


def _activation(config: ComponentConfig, dims: ModelDims, options: dict[str, Any]) -> Report:
    return check_activation(config.build(), **options)


_CHECKS: dict[str, Callable[[ComponentConfig, ModelDims, dict[str, Any]], Report]] = {
    "attention": _attention,
    "mask": _mask,
    "position": _position,
    "norm": _norm,
    "ffn": _ffn,
    "activation": _activation,
}


def check_component(
    registry: Registry,
    kind: str,
    name: str,
    *,
    dims: ModelDims | None = None,
    check_options: Mapping[str, Any] | None = None,
    **params: Any,
) -> Report:
    """Build ``kind``/``name`` from ``registry`` with ``params`` and run its kind's check.

    The config is validated exactly as a spec would validate it
    (:meth:`Registry.config`), its :meth:`~txblocks.ComponentConfig.check` must find no
    problem in a model of ``dims``, and the component is built by its registered
    factory with the arguments of its kind (see :mod:`txblocks.hookspecs`). Then:

    ==============  ===============================================================
    kind            check
    ==============  ===============================================================
    ``attention``   :func:`check_attention_kernel` against the eager reference
    ``mask``        :func:`check_mask_strategy`; pass ``check_options={"reference":
                    fn}`` to compare with a definition
    ``position``    :func:`check_positional_scheme` with the sizes of ``dims``
    ``norm``        :func:`check_norm` of width ``dims.d_model``
    ``ffn``         :func:`check_ffn` of width ``dims.d_model``
    ``activation``  :func:`check_activation`
    ==============  ===============================================================

    Args:
        registry: a registry holding the component, e.g.
            ``txblocks.load_registry(autoload=False, plugins=[my_plugin])``.
        kind: the component kind.
        name: the registered name.
        dims: the model sizes given to factories; default :data:`DEFAULT_DIMS`
            (d_model 32, 4 heads of 8, 2 kv heads, max_seq_len 64).
        check_options: keyword arguments for the check (``dtypes``, ``device``,
            ``atol``, ``reference``, ``batch_independent``, ``relative``, ``seed``, ...).
        **params: the component's parameters, as in a spec (``eps=1e-6``,
            ``activation="silu"``).

    Returns:
        The check's :class:`Report`.

    Raises:
        txblocks.RegistryError: the kind or name is not registered.
        txblocks.SpecError: ``params`` are invalid for the config.
        ValueError: the config's ``check(dims)`` reports problems, or no check exists
            for ``kind``.
        AssertionError: the component fails its check.

    Example::

        registry = txblocks.load_registry(autoload=False, plugins=[plugin])
        print(check_component(registry, "norm", "scalenorm", eps=1e-6))
    """
    registry.get(kind, name)  # a clear error for an unknown kind or name
    if kind not in _CHECKS:
        raise ValueError(
            f"no conformance check for kind {kind!r} ({name!r}); checks exist for: "
            f"{', '.join(sorted(_CHECKS))}"
        )
    dims = dims or DEFAULT_DIMS
    config = registry.config(kind, name, **params)
    problems = config.check(dims)
    if problems:
        raise ValueError(f"{kind} {name!r} does not fit {dims}: {'; '.join(problems)}")
    return _CHECKS[kind](config, dims, dict(check_options or {}))
