"""The plugin contract: the hooks a txblocks plugin may implement.

A plugin is a module named by an entry point in the ``txblocks`` group::

    [project.entry-points.txblocks]
    scalenorm = "txblocks_scalenorm.plugin"

It implements hooks by decorating functions with :data:`txblocks.hookimpl`.
txblocks' own built-in components are registered through exactly this door.

A hook's arguments must be named as below (a subset is fine). An installed plugin
whose hooks do not match (a wrong argument name, a misspelt hook such as
``txblocks_regsiter``), that implements no hook, or whose ``txblocks_register``
raises, is skipped with a :class:`txblocks.TxblocksPluginWarning` naming it; the
other plugins still load (:func:`txblocks.plugins.plugin_status` lists what
happened to each). To implement a hook that only a newer txblocks defines, mark it
``@txblocks.hookimpl(optionalhook=True)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from txblocks.registry import Registry
    from txblocks.spec.models import ModelSpec

PROJECT = "txblocks"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def txblocks_register(registry: Registry) -> None:
    """Add components to ``registry``.

    Called once per plugin when a registry is built (``txblocks.default_registry()``
    or :func:`txblocks.plugins.load_registry`). Each call runs with the plugin's
    distribution recorded as the owner of what it adds.

    Args:
        registry: the registry being built. Call ``registry.add(kind, name, factory,
            config)`` for each component. Adding a kind and name that another
            plugin already added raises :class:`txblocks.RegistryError` naming both
            owners, unless ``override=True`` is passed.

    Returns:
        Nothing; every result is ignored.

    If this hook raises (that ``RegistryError`` included), everything it added is
    undone and the plugin is skipped with a warning naming it and the error; a plugin
    passed to ``load_registry(plugins=[...])`` raises :class:`txblocks.PluginError`
    instead.

    The factory is called by ``txblocks.build`` with the arguments that its kind
    defines, the validated config instance last:

    ================  =============================================  ==========================
    kind              factory(...)                                   returns
    ================  =============================================  ==========================
    ``norm``          ``(dim: int, config)``                         module ``(..., dim) -> same``
    ``activation``    ``(config)``                                   elementwise module
    ``ffn``           ``(dim: int, config)``                         module ``(B, T, dim) -> (B, T, dim)``
                                                                     or ``(out, aux_loss)``
    ``attention``     ``(config)``                                   an :class:`~txblocks.attention.AttentionKernel`
    ``mask``          ``(config)``                                   a :class:`~txblocks.attention.MaskStrategy`
    ``position``      ``(dims: ModelDims, config)``                  a :class:`~txblocks.nn.PositionalScheme`
    ``head``          ``(dims: ModelDims, embedding, config)``       module ``(B, T, d_model) -> logits``
    ``front_end``     ``(inputs: FrontEndInputs, config)``           module: raw inputs -> the first
                      (:class:`txblocks.nn.front_end.FrontEndInputs`) hidden states ``(B, T, d_model)``
    ``adapter``       ``(config)``                                   an object applied by a
                                                                     ``txblocks_after_build`` hook
    ``hf_family``     ``(config)``                                   a :class:`txblocks.hf.HFFamily`
    ``quantization``  ``(model: nn.Module, config)``                 nothing; quantizes the
                                                                     model's layers in place
    ================  =============================================  ==========================

    A config field declared with :func:`txblocks.slot` holds a nested component
    (an ffn's activation, for instance); call ``config.activation.build()`` inside
    the factory to get its module.

    What a factory returns is checked when it is built: a factory that raises, or
    returns None or the wrong type for its kind (the table's kinds from ``norm`` to
    ``front_end``), gives a :class:`txblocks.BuildError` naming the spec path, the
    component and the plugin that registered it.
    """


@hookspec
def txblocks_after_build(model: nn.Module, spec: ModelSpec) -> None:
    """Change a model right after :func:`txblocks.build` assembled and initialised it.

    Called for every plugin of the registry the model was built with, after weight
    initialisation and before the dtype cast. Adapters use it: a LoRA plugin reads
    ``spec.adapters`` and wraps the matching linear layers.

    It also runs on the model that :func:`txblocks.build` first assembles on the meta
    device to measure it (``build_on_meta``, ``txblocks summary``): its tensors have
    shapes and no data, so an implementation must not read parameter values (new modules
    it adds are created on the parameters' device, meta included).

    Args:
        model: the new model (modify it in place).
        spec: the validated spec it was built from.

    Returns:
        Nothing; every result is ignored.
    """
