"""Greedy decoding speed: txblocks vs Hugging Face `generate` on the same GPT-2-small weights.

Run by hand: `.venv/bin/python benchmarks/generate.py [--new-tokens 64] [--prompt 32]`.
Prints tokens/s for batch 1 and 8 in fp32 and bf16, the ratio to Hugging Face measured
in the same run, and the weight-streaming bound: a decoding step must read every weight
once, so tokens/s ≤ bandwidth / weight bytes, with the matrix-vector bandwidth measured
here too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matvec_bandwidth, median_seconds  # noqa: E402

import txblocks  # noqa: E402


def hf_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config()).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    hf_fp32 = hf_gpt2()
    ours_fp32 = txblocks.from_hf(hf_fp32).eval()
    weight_bytes = sum(p.numel() for p in {id(p): p for p in ours_fp32.parameters()}.values())
    # The token embedding is read for one row per step, not streamed: leave it out of the bound
    # unless the head is tied to it (then the head streams it).
    print(f"{'dtype':6} {'batch':>5} {'HF tok/s':>9} {'ours tok/s':>10} {'ours/HF':>8} "
          f"{'bound tok/s':>11} {'ours/bound':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        hf = hf_fp32.to(dtype)
        ours = ours_fp32.to(dtype)
        bandwidth = matvec_bandwidth(dtype)
        element = torch.tensor([], dtype=dtype).element_size()
        bound = bandwidth / (weight_bytes * element)
        for batch in (1, 8):
            ids = torch.randint(0, 50257, (batch, args.prompt))
            mask = torch.ones_like(ids)
            n = args.new_tokens

            def run_hf() -> None:
                hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=0)

            def run_ours() -> None:
                ours.generate(ids, mask, max_new_tokens=n)

            with torch.no_grad():
                t_hf = median_seconds(run_hf, repeats=args.repeats)
                t_ours = median_seconds(run_ours, repeats=args.repeats)
            hf_rate, our_rate = batch * n / t_hf, batch * n / t_ours
            print(f"{str(dtype).removeprefix('torch.'):6} {batch:5d} {hf_rate:9.1f} {our_rate:10.1f} "
                  f"{our_rate / hf_rate:8.2f} {bound * batch:11.1f} {our_rate / (bound * batch):10.2f}")


if __name__ == "__main__":
    main()
