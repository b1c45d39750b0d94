"""Build time: spec -> initialised model, against Hugging Face constructing the same model.

Run by hand: `.venv/bin/python benchmarks/build.py`. Also times spec validation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds  # noqa: E402

import txblocks  # noqa: E402
from txblocks.plugins import default_registry  # noqa: E402


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    print(f"machine: {machine()}")
    config = GPT2Config(n_layer=24)
    spec_dict = txblocks.spec_from_hf(config, hf_class="GPT2LMHeadModel").model_dump(mode="json")
    default_registry()
    start = time.perf_counter()
    for _ in range(100):
        spec = txblocks.load_spec(spec_dict)
    validate = (time.perf_counter() - start) / 100
    t_hf = median_seconds(lambda: GPT2LMHeadModel(config), repeats=3)
    t_ours = median_seconds(lambda: txblocks.build(spec), repeats=3)
    print(f"spec validation: {validate * 1e3:.2f} ms")
    print(f"24-layer GPT-2 build: HF {t_hf:.2f}s, txblocks {t_ours:.2f}s, ratio {t_ours / t_hf:.2f}")


if __name__ == "__main__":
    main()
