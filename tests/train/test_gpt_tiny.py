"""examples/specs/gpt-tiny.yaml, the model `make run` trains on addition.

The full run (about a minute on 2 CPU cores) runs in CI (CI=true) and on request
(TXBLOCKS_TRAIN_GPT_TINY=1). Its time is a benchmark's business, not a test's: `make run`
prints it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

import txblocks
from txblocks import train

SPEC = Path(__file__).parents[2] / "examples" / "specs" / "gpt-tiny.yaml"
MAKE_RUN = {"task": "addition", "steps": 2000, "batch_size": 64, "lr": 3e-3, "threads": 1}


def test_gpt_tiny_fits_the_decoder_tasks_and_the_byte_tokenizer(registry):
    spec = txblocks.load_spec(SPEC, registry=registry)
    assert spec.arch == "decoder" and spec.vocab_size >= 256  # `txblocks generate` reads bytes
    for name in ("addition", "copy"):
        assert train.make_task(name, spec).name == name


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("TXBLOCKS_TRAIN_GPT_TINY") or os.environ.get("CI")),
                    reason="a minute of training; runs in CI, or set TXBLOCKS_TRAIN_GPT_TINY=1")
def test_make_run_trains_gpt_tiny_to_95_percent(tmp_path):
    result = train.run(SPEC, **MAKE_RUN, checkpoint_path=tmp_path / "gpt-tiny.safetensors",
                       eval_examples=1000, console=Console(quiet=True))
    assert result.accuracy >= 0.95
