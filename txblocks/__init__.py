"""txblocks: Transformer building blocks as plugins, assembled from a validated spec.

Example::

    import txblocks
    spec = txblocks.load_spec("examples/specs/gpt2.yaml")
    model = txblocks.build(spec)
    out = model(input_ids)          # out.logits, out.last_hidden_state, out.aux_loss
    txblocks.quantize(model, "int8_weight_only")   # int8 inference (needs torchao)
"""

from txblocks.build import build
from txblocks.checkpoint import CheckpointError, LoadReport, Mismatch, load, load_weights, save
from txblocks.errors import (
    BuildError,
    KernelUnavailableError,
    PluginError,
    Problem,
    QuantizationError,
    RegistryError,
    SpecError,
    TxblocksPluginWarning,
)
from txblocks.hf import (
    HFConversionError,
    from_hf,
    from_pretrained,
    save_pretrained,
    spec_from_hf,
    to_hf,
)
from txblocks.hookspecs import hookimpl
from txblocks.nn.dims import ModelDims
from txblocks.generation import GenerationConfig
from txblocks.nn.cache import KVCache
from txblocks.nn.model import ModelOutput, Seq2SeqModel, TransformerModel
from txblocks.nn.vit import VisionTransformer
from txblocks.plugins import default_registry, load_registry
from txblocks.quantize import quantize
from txblocks.registry import ComponentConfig, Entry, Owner, Registry, slot
from txblocks.spec import ModelSpec, Slot, load_spec

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "CheckpointError",
    "GenerationConfig",
    "HFConversionError",
    "from_hf",
    "from_pretrained",
    "save_pretrained",
    "spec_from_hf",
    "to_hf",
    "KVCache",
    "LoadReport",
    "Mismatch",
    "Seq2SeqModel",
    "VisionTransformer",
    "load",
    "load_weights",
    "save",
    "ComponentConfig",
    "Entry",
    "KernelUnavailableError",
    "ModelDims",
    "ModelOutput",
    "ModelSpec",
    "Owner",
    "PluginError",
    "Problem",
    "QuantizationError",
    "Registry",
    "RegistryError",
    "Slot",
    "SpecError",
    "TransformerModel",
    "TxblocksPluginWarning",
    "build",
    "default_registry",
    "hookimpl",
    "load_registry",
    "load_spec",
    "quantize",
    "slot",
]
