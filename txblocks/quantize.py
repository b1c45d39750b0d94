"""Int8 inference through torchao: the linear layers of a built model become int8.

Two modes, registered as components of kind ``quantization`` (see
:mod:`txblocks.components.quantization`), so a spec can declare them and a plugin can add more:

- ``int8_weight_only``: every ``nn.Linear`` weight (O, I) is stored as int8 with one float
  scale per output row, ``scale = max|w_row| / 127.5``, ``q = round(w / scale)``; activations
  stay float and the matmul reads the int8 weight (torchao ``Int8WeightOnlyConfig``; on CPU
  the product runs PyTorch's int8 kernel on bfloat16 activations, see
  :mod:`txblocks.int8_linear`).
- ``int8_dynamic``: the same int8 weights, and each activation row (token) is quantized to
  int8 at run time; the int8 x int8 product accumulates in int32 and is rescaled
  (torchao ``Int8DynamicActivationInt8WeightConfig``).

Every ``nn.Linear`` is quantized, the output head included. A head tied to the token
embedding is untied: the head gets an int8 copy of the table, the embedding keeps its float
table, so token lookups stay exact and cost no dequantization (torchao swaps the Linear's
``weight`` Parameter and leaves ``nn.Embedding`` alone). The int8 copy adds ``vocab x d_model``
bytes, a quarter of the float32 table.

torchao is an optional dependency (``pip install 'txblocks[quant]'``), imported only when a
model is quantized. Quantized models are for inference: their int8 weights take no gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from txblocks.errors import QuantizationError, did_you_mean

if TYPE_CHECKING:
    from txblocks.registry import ComponentConfig, Registry

__all__ = [
    "INSTALL_HINT",
    "Mode",
    "apply_quantization",
    "is_quantized",
    "quantize",
    "quantized_linears",
    "stored_bytes",
    "torchao_int8",
]

INSTALL_HINT = "pip install 'txblocks[quant]'  (or: pip install 'torchao>=0.18')"
KIND = "quantization"
Mode = Literal["int8_weight_only", "int8_dynamic"]

# Loggers that torchao's import writes to on a CPU-only machine: it tries its CUDA extensions
# (and says so), and registers an enum with torch's pytree (a deprecation notice). Neither
# concerns CPU int8 inference.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextmanager
def _quiet(names: tuple[str, ...] = _NOISY_LOGGERS) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torchao_quantization() -> Any:
    """``torchao.quantization``, or a :class:`QuantizationError` saying how to install it."""
    try:
        with _quiet():
            import torchao.quantization as ao
    except ImportError as exc:
        raise QuantizationError(
            f"int8 quantization runs on torchao, which is not installed ({exc}); {INSTALL_HINT}"
        ) from exc
    missing = [name for name in ("quantize_", "Int8WeightOnlyConfig",
                                 "Int8DynamicActivationInt8WeightConfig") if not hasattr(ao, name)]
    if missing:
        import torchao

        raise QuantizationError(
            f"torchao {getattr(torchao, '__version__', '?')} lacks {', '.join(missing)}; "
            f"txblocks needs torchao>=0.18: {INSTALL_HINT}"
        )
    return ao


def _is_torchao_tensor(tensor: Any) -> bool:
    return type(tensor).__module__.split(".")[0] == "torchao"


def stored_bytes(tensor: Any) -> int:
    """Bytes ``tensor`` occupies: for a torchao tensor, its int8 data plus its scales (any
    wrapper subclass: the tensors it flattens to), else ``numel x element_size``."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def quantized_linears(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` whose weight is a torchao tensor."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and _is_torchao_tensor(m.weight)]


def is_quantized(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a quantized (torchao) tensor; never imports torchao."""
    return any(_is_torchao_tensor(p) for p in model.parameters())


def torchao_int8(model: nn.Module, *, dynamic: bool) -> None:
    """Quantize every ``nn.Linear`` of ``model`` in place with torchao's int8 configs.

    Args:
        model: any module; its ``nn.Linear`` weights become torchao ``Int8Tensor`` parameters
            (per-row symmetric scales), biases stay float.
        dynamic: also quantize activations per token at run time (int8 x int8 matmul);
            ``False`` is weight-only.

    Raises:
        QuantizationError: torchao is missing, or the model has no ``nn.Linear``.
    """
    ao = _torchao_quantization()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise QuantizationError(f"{type(model).__name__} has no nn.Linear to quantize")
    # set_inductor_config=False: torchao would otherwise change torch._inductor's global
    # settings, which concern torch.compile only (and every model in the process).
    if dynamic:
        config = ao.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        config = ao.Int8WeightOnlyConfig(set_inductor_config=False)
    with _quiet():
        ao.quantize_(model, config, filter_fn=lambda module, fqn: isinstance(module, nn.Linear))
    if not dynamic:
        from txblocks.int8_linear import use_int8_kernel

        use_int8_kernel(model)  # torchao's own CPU weight-only product is slower than float


def _config(mode: str, registry: Registry | None) -> ComponentConfig:
    if registry is None:
        from txblocks.plugins import default_registry

        registry = default_registry()
    modes = registry.names(KIND)
    if mode not in modes:
        raise QuantizationError(
            f"unknown quantization mode {mode!r}; modes: {', '.join(modes) or '(none registered)'}"
            f"{did_you_mean(mode, modes)}"
        )
    return registry.config(KIND, mode)


def apply_quantization(model: nn.Module, config: ComponentConfig) -> nn.Module:
    """Apply a validated ``quantization`` config (a spec's) to ``model``; record it in its spec.

    Raises:
        QuantizationError: ``model`` is already quantized, or the mode cannot run here.
    """
    done = quantized_linears(model)
    if done:
        raise QuantizationError(
            f"{type(model).__name__} is already quantized ({len(done)} int8 linear layers, e.g. "
            f"{done[0]}); quantize a float model"
        )
    config.build(model)
    from txblocks.spec.models import ModelSpec  # here: the spec package imports the registry

    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec) and getattr(spec, "quantization", None) != config:
        model.spec = spec.model_copy(update={"quantization": config})
    return model


def quantize(model: nn.Module, mode: Mode | str, *, registry: Registry | None = None) -> nn.Module:
    """Quantize the linear layers of a built model to int8 for inference, in place (torchao).

    Example::

        model = txblocks.load("gpt2.safetensors")
        txblocks.quantize(model, "int8_weight_only")
        ids = model.generate(prompt, max_new_tokens=32)

    Args:
        model: a model from :func:`txblocks.build` or :func:`txblocks.load` (any module with
            ``nn.Linear`` layers works), in float32 or bfloat16. Every ``nn.Linear`` is
            quantized, the output head too; a head tied to the embedding gets its own int8
            copy and the embedding stays float.
        mode: ``"int8_weight_only"`` (int8 weights, float activations) or ``"int8_dynamic"``
            (int8 weights, activations quantized per token at run time), or a mode that a
            plugin registered under kind ``quantization``.
        registry: where to look ``mode`` up; default :func:`txblocks.default_registry`.

    Returns:
        ``model`` itself. Its ``spec`` (when it has one) now declares ``quantization``.
        :func:`txblocks.save` refuses quantized models: save the float model, quantize after
        loading.

    Raises:
        QuantizationError: an unknown mode (the message lists the modes), torchao not
            installed (``pip install 'txblocks[quant]'``), or a model already quantized.
    """
    if not isinstance(mode, str):
        raise QuantizationError(f"mode must be a string such as 'int8_weight_only', got {mode!r}")
    return apply_quantization(model, _config(mode, registry))
