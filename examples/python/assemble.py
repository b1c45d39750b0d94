"""Assemble models from Python, without YAML.

Run: .venv/bin/python examples/python/assemble.py
"""

from __future__ import annotations

import torch

import txblocks
from txblocks.spec import DecoderSpec  # noqa: F401  (the spec's fields are documented there)


def main() -> None:
    # 1. A spec as a plain dict: the same validation, defaults and errors as YAML.
    spec = txblocks.load_spec(
        {
            "arch": "decoder",
            "name": "hybrid-tiny",
            "vocab_size": 1000,
            "max_seq_len": 256,
            "d_model": 128,
            "n_layers": 4,
            "n_heads": 4,
            "n_kv_heads": 2,
            "position": {"type": "rope", "theta": 10000},
            "block": {
                "norm": "rmsnorm",
                "attention": {"bias": False},
                "ffn": {"type": "glu", "hidden": 344},
            },
            # local attention on even layers, global on odd ones (Gemma 2 / Mistral style)
            "layers": [{"select": "even", "attention": {"mask": {"type": "sliding_window", "window": 64}}}],
        }
    )
    model = txblocks.build(spec)
    print(spec.to_yaml())

    # 2. Inspect and run it.
    ids = torch.randint(0, spec.vocab_size, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in the second row
    out = model(ids, attention_mask=mask)
    print("logits", tuple(out.logits.shape), "hidden", tuple(out.last_hidden_state.shape))
    print("layer 0 mask:", spec.block_for(0).attention.mask, "| layer 1 mask:", spec.block_for(1).attention.mask)

    # 3. Start from a shipped preset and change a field: specs are pydantic models.
    llama = txblocks.load_spec({"extends": "llama", "n_layers": 2, "name": "llama-2-layers"})
    print(llama.name, llama.n_layers, llama.block.ffn.type)

    # 4. Components straight from the registry, without a model.
    registry = txblocks.default_registry()
    norm = registry.config("norm", "rmsnorm", eps=1e-5).build(128)
    ffn = registry.config("ffn", "glu", hidden=256, activation="gelu").build(128)
    x = torch.randn(2, 16, 128)
    print("norm", tuple(norm(x).shape), "ffn", tuple(ffn(x).shape))

    # 5. Every mistake, with its path and a suggestion.
    try:
        txblocks.load_spec({**spec.model_dump(), "block": {"norm": "rmsnrom"}})
    except txblocks.SpecError as err:
        print(err)


if __name__ == "__main__":
    main()
