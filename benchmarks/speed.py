"""Forward and training-step time: txblocks vs Hugging Face (same weights) vs x-transformers.

Run by hand: `make bench` or `.venv/bin/python benchmarks/speed.py [--families gpt2-small,...]`.
Prints, per family, medians over repeats and the ratio to Hugging Face measured in the
same run, and each txblocks forward's share of this machine's matrix-multiply rate
(measured here too; FLOPs counted by torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_rate, median_seconds  # noqa: E402
from families import call, families, pair  # noqa: E402


def flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call(model, inputs)
    return counter.get_total_flops()


def train_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = call(model, inputs).float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", default="")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time forward+backward+AdamW")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd txblocks")
    args = parser.parse_args()
    wanted = set(filter(None, args.families.split(",")))
    print(f"machine: {machine()}")
    rates = {dtype: matmul_rate(dtype) for dtype in (torch.float32, torch.bfloat16)}
    for dtype, rate in rates.items():
        print(f"matmul rate {str(dtype).removeprefix('torch.')}: {rate / 1e9:.0f} GFLOP/s")
    print(f"{'family':14} {'dtype':5} {'HF ms':>8} {'ours ms':>8} {'ours/HF':>7} {'of peak':>7} "
          f"{'xt ms':>8} {'extra':>24}")
    for family in families():
        if wanted and family.name not in wanted:
            continue
        hf, ours = pair(family)
        inputs = family.inputs(args.batch, args.seq_len)
        work = flops(ours, inputs)
        xt = family.xt().eval() if family.xt is not None and _has_xt() else None
        for dtype in (torch.float32, torch.bfloat16):
            hf.to(dtype), ours.to(dtype)
            if xt is not None:
                xt.to(dtype)
            typed = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            with torch.no_grad():
                t_hf = median_seconds(lambda: call(hf, typed), repeats=args.repeats)
                t_ours = median_seconds(lambda: call(ours, typed), repeats=args.repeats)
                t_xt = (median_seconds(lambda: xt(*family.xt_inputs(args.batch, args.seq_len)),
                                       repeats=args.repeats) if xt is not None else float("nan"))
            extra = ""
            if args.compile:
                compiled = torch.compile(ours)
                with torch.no_grad():
                    t_c = median_seconds(lambda: call(compiled, typed), repeats=args.repeats, warmup=2)
                extra += f"compiled/eager {t_c / t_ours:.2f} "
            print(f"{family.name:14} {str(dtype).removeprefix('torch.')[:5]:5} {t_hf * 1e3:8.1f} "
                  f"{t_ours * 1e3:8.1f} {t_ours / t_hf:7.2f} {work / t_ours / rates[dtype]:7.0%} "
                  f"{t_xt * 1e3:8.1f} {extra:>24}")
            if args.train:
                hf.train(), ours.train()
                t_hf = median_seconds(train_step(hf, typed, dtype), repeats=args.repeats)
                t_ours = median_seconds(train_step(ours, typed, dtype), repeats=args.repeats)
                hf.eval(), ours.eval()
                print(f"{'  train step':14} {str(dtype).removeprefix('torch.')[:5]:5} {t_hf * 1e3:8.1f} "
                      f"{t_ours * 1e3:8.1f} {t_ours / t_hf:7.2f}")
            hf.float(), ours.float()


def _has_xt() -> bool:
    try:
        import x_transformers  # noqa: F401
    except ImportError:
        print("(x-transformers not installed: `pip install x-transformers` for its column)")
        return False
    return True


if __name__ == "__main__":
    main()
