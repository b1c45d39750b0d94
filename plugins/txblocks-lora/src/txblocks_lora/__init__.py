"""txblocks-lora: LoRA adapters (Hu et al. 2021) for txblocks models.

In a spec::

    adapters:
      - {type: lora, rank: 4, targets: ["*.ffn.*"]}

or on any model::

    import txblocks_lora
    txblocks_lora.apply_lora(model, rank=4, targets=["*.ffn.*"])
    txblocks_lora.save_adapters(model, "adapters.safetensors")
"""

from txblocks_lora.apply import (
    apply_lora,
    lora_layers,
    lora_parameters,
    mark_only_lora_trainable,
    merge,
    unmerge,
)
from txblocks_lora.config import DEFAULT_TARGETS, LoRAConfig
from txblocks_lora.errors import LoRAError
from txblocks_lora.io import load_adapters, lora_state_dict, save_adapters
from txblocks_lora.layer import LoRALinear

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGETS",
    "LoRAConfig",
    "LoRAError",
    "LoRALinear",
    "apply_lora",
    "load_adapters",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge",
    "save_adapters",
    "unmerge",
]
