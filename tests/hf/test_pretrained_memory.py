"""Peak memory of ``from_pretrained``: at most 1.2x the weights' bytes, measured.

A GPT-2-shaped model of about 425 MB of fp32 weights (4 layers 768 wide, 50257 tokens,
untied head: the largest tensor is read last) is saved once by ``transformers`` in
100 MB shards. A fresh Python process imports everything, resets its peak resident set
(``/proc/self/clear_refs``), loads the folder, and reports the peak (``VmHWM``): the
growth over the resident set before loading must stay within 1.2x the bytes of the
tensors in the files, plus 64 MB for the allocator and Python objects. Linux only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf.shards import Shards

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure the peak"
)

SLACK = 64 * 2**20

MEASURE = r"""
import json, sys
import torch, transformers, txblocks
transformers.AutoConfig, transformers.GPT2LMHeadModel  # imported before measuring

def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set starts again from here
before = kib("VmRSS")
model = txblocks.from_pretrained(sys.argv[1])
peak = kib("VmHWM")
params = sum(p.numel() * p.element_size() for p in model.parameters())
ids = torch.randint(0, 50257, (1, 8))
with torch.no_grad():
    logits = model(ids).logits[0, -1, :5].tolist()
print(json.dumps({"before": before, "peak": peak, "params": params, "ids": ids.tolist(),
                  "logits": logits}))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.PreTrainedModel]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=768, n_head=12, vocab_size=50257,
                                     n_positions=512, tie_word_embeddings=False)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("gpt2-425mb")
    hf.save_pretrained(path, max_shard_size="100MB")
    return path, hf


def test_peak_memory_is_within_1_2x_the_weights(
    folder: tuple[Path, transformers.PreTrainedModel],
) -> None:
    path, hf = folder
    with Shards(path) as shards:
        weights = shards.nbytes()
        assert len({e.file for e in shards.entries.values()}) > 1
    assert 350 * 2**20 < weights < 500 * 2**20
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    growth = result["peak"] - result["before"]
    ratio = growth / weights
    print(f"from_pretrained: {weights / 2**20:.0f} MB of weights, peak growth "
          f"{growth / 2**20:.0f} MB ({ratio:.3f}x), {elapsed:.1f} s in the child process")
    assert result["params"] == weights  # every weight once, none twice
    assert growth <= 1.2 * weights + SLACK, f"peak grew {ratio:.2f}x the weights"
    with torch.no_grad():  # and it is the model
        expected = hf(torch.tensor(result["ids"])).logits[0, -1, :5]
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-4)
