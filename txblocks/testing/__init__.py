"""Conformance checks for plugin authors: the checks every built-in component passes.

One call checks a registered component against the contract of its kind::

    import txblocks
    from txblocks.testing import check_component
    from my_plugin import plugin

    registry = txblocks.load_registry(autoload=False, plugins=[plugin])
    report = check_component(registry, "norm", "scalenorm", eps=1e-6)
    print(report)       # what ran, what was skipped and why

Each check raises ``AssertionError`` naming the property, the setting and (for
tensors) the largest difference, so it fails a pytest test with a readable message.
The checks can also be called on objects built by hand: :func:`check_attention_kernel`,
:func:`check_mask_strategy`, :func:`check_positional_scheme`, :func:`check_ffn`,
:func:`check_norm`, :func:`check_activation`. Random inputs come from a seed printed
in every message and report; pass ``seed=`` to replay a failure.

:func:`txblocks.testing.scaffold.new_plugin` writes a new plugin distribution.
"""

from txblocks.testing.component import DEFAULT_DIMS, check_component
from txblocks.testing.kernels import check_attention_kernel
from txblocks.testing.masks import (
    MaskExample,
    Reference,
    builtin_mask_examples,
    check_mask_strategy,
)
from txblocks.testing.modules import check_activation, check_ffn, check_norm
from txblocks.testing.positions import check_positional_scheme
from txblocks.testing.report import Report

__all__ = [
    "DEFAULT_DIMS",
    "MaskExample",
    "Reference",
    "Report",
    "builtin_mask_examples",
    "check_activation",
    "check_attention_kernel",
    "check_component",
    "check_ffn",
    "check_mask_strategy",
    "check_norm",
    "check_positional_scheme",
]
