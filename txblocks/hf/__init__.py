"""Hugging Face ``transformers`` models to txblocks specs and weights, and back.

Example::

    from transformers import LlamaConfig, LlamaForCausalLM
    from txblocks.hf import from_hf, spec_from_hf, to_hf

    hf = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_attention_heads=4, ...))
    print(spec_from_hf(hf.config).to_yaml())     # the spec alone
    model = from_hf(hf)                          # spec + weights, eval mode
    back = to_hf(model)                          # LlamaForCausalLM again

    model = from_pretrained("path/to/hf-folder") # config.json + safetensors shards, lazily
    save_pretrained(model, "out/")               # a folder transformers loads

Families are data (:class:`HFFamily`: config mapping, weight :class:`Rule` list, one
:class:`HFHead` per model class); plugins add theirs under the registry kind
``hf_family``. Importing this package never imports ``transformers``; only ``to_hf``
does. See ``docs/hf.md`` and ``docs/pretrained.md``.
"""

from txblocks.hf.convert import HFOrigin, builtin_families, families, from_hf, spec_from_hf, to_hf
from txblocks.hf.export import save_pretrained
from txblocks.hf.family import ConfigView, HFConversionError, HFFamily, HFHead
from txblocks.hf.files import convert_checkpoint, file_to_folder, folder_to_file
from txblocks.hf.pretrained import from_pretrained
from txblocks.hf.rules import TRANSFORMS, Rule, Select, Transform

__all__ = [
    "TRANSFORMS",
    "ConfigView",
    "HFConversionError",
    "HFFamily",
    "HFHead",
    "HFOrigin",
    "Rule",
    "Select",
    "Transform",
    "builtin_families",
    "convert_checkpoint",
    "families",
    "file_to_folder",
    "folder_to_file",
    "from_hf",
    "from_pretrained",
    "save_pretrained",
    "spec_from_hf",
    "to_hf",
]
