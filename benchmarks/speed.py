"""Forward and training-step time: txblocks vs Hugging Face (same weights) vs x-transformers.

Run by hand: `make bench` or `.venv/bin/python benchmarks/speed.py [--families gpt2-small,...]`.
Per family and dtype it prints medians over interleaved repeats, the ratio to Hugging Face
and to x-transformers (same shapes, its own weights) measured in the same run, each
forward's share of this machine's matrix-multiply rate (measured here too; FLOPs counted by
torch's FlopCounterMode), and the forward's peak memory relative to Hugging Face's. Then the
MoE model against a dense model with its active parameters. `--compile` adds compiled vs
eager; `--device cuda` runs on a GPU and compares the txblocks attention kernels (xformers,
sdpa, eager) with Hugging Face's SDPA attention, reporting TFLOP/s.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine, matmul_rate, peak_bytes  # noqa: E402
from families import Family, call, dense_twin_of_mixtral, families, pair  # noqa: E402

import txblocks  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call(model, inputs)
    return counter.get_total_flops()


def train_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
               dtype: torch.dtype) -> Callable[[], None]:
    """One forward + backward + AdamW step, in bf16 autocast unless ``dtype`` is fp32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    device = next(model.parameters()).device.type

    def step() -> None:
        autocast = (torch.autocast(device, dtype=dtype) if dtype != torch.float32
                    else contextlib.nullcontext())
        with autocast:
            loss = call(model, inputs).float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def typed(inputs: dict[str, torch.Tensor], dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in inputs.items()}


def with_kernel(model: torch.nn.Module, kernel: str) -> torch.nn.Module:
    """The same model and weights, with ``kernel`` on every layer."""
    data = model.spec.model_dump(mode="json")
    data["block"]["attention"]["kernel"] = kernel
    for layer in data.get("layers", []):
        if layer.get("attention"):
            layer["attention"].pop("kernel", None)
    first = next(model.parameters())
    other = txblocks.build(data, device=first.device, dtype=first.dtype)
    other.load_state_dict(model.state_dict())
    return other.eval()


def bench_family(family: Family, args: argparse.Namespace, rates: dict[str, float]) -> None:
    hf, ours = pair(family)
    xt = family.xt().eval() if family.xt is not None and _has_xt() else None
    inputs = family.inputs(args.batch, args.seq_len)
    work = flops(ours, inputs)
    for name, dtype in DTYPES.items():
        for model in (hf, ours, xt):
            if model is not None:
                model.to(device=args.device, dtype=dtype)
        x = typed(inputs, dtype, args.device)
        contenders: dict[str, Callable[[], object]] = {"hf": lambda: call(hf, x), "ours": lambda: call(ours, x)}
        if xt is not None:
            xt_in = tuple(t.to(args.device, dtype) if t.is_floating_point() else t.to(args.device)
                          for t in family.xt_inputs(args.batch, args.seq_len))
            contenders["xt"] = lambda: xt(*xt_in)
        if args.compile:
            compiled = torch.compile(ours)
            contenders["compiled"] = lambda: call(compiled, x)
        if args.device == "cuda":
            for kernel in ("xformers", "sdpa", "eager"):
                variant = with_kernel(ours, kernel)
                contenders[kernel] = lambda variant=variant: call(variant, x)
        with torch.no_grad():
            t = compare(contenders, repeats=args.repeats, warmup=2 if args.compile else 1)
            memory = peak_bytes(lambda: call(ours, x)) / max(peak_bytes(lambda: call(hf, x)), 1)
        extra = ""
        if "xt" in t:
            extra += f" ours/xt {t['ours'] / t['xt']:5.2f}"
        if "compiled" in t:
            extra += f" compiled/eager {t['compiled'] / t['ours']:5.2f}"
        for kernel in ("xformers", "sdpa", "eager"):
            if kernel in t:
                extra += f" {kernel} {work / t[kernel] / 1e12:6.1f} TFLOP/s"
        print(f"{family.name:14} {name:4} {'forward':8} {t['hf'] * 1e3:9.1f} {t['ours'] * 1e3:9.1f} "
              f"{t['ours'] / t['hf']:7.2f} {work / t['hf'] / rates[name]:6.0%} "
              f"{work / t['ours'] / rates[name]:6.0%} {memory:6.2f}{extra}")
        if args.train:
            hf.train(), ours.train()
            steps = {"hf": train_step(hf, x, dtype), "ours": train_step(ours, x, dtype)}
            t = compare(steps, repeats=args.repeats)
            hf.eval(), ours.eval()
            print(f"{family.name:14} {name:4} {'train':8} {t['hf'] * 1e3:9.1f} {t['ours'] * 1e3:9.1f} "
                  f"{t['ours'] / t['hf']:7.2f}")
        for model in (hf, ours, xt):
            if model is not None:
                model.float()


def bench_moe_vs_dense(args: argparse.Namespace) -> None:
    moe = next(f for f in families() if f.name == "mixtral-small")
    _, sparse = pair(moe)
    dense = dense_twin_of_mixtral()
    inputs = moe.inputs(args.batch, args.seq_len)
    for name, dtype in DTYPES.items():
        sparse.to(device=args.device, dtype=dtype), dense.to(device=args.device, dtype=dtype)
        x = typed(inputs, dtype, args.device)
        with torch.no_grad():
            t = compare({"moe": lambda: call(sparse, x), "dense": lambda: call(dense, x)},
                        repeats=args.repeats)
        print(f"mixtral-small {name}: MoE {t['moe'] * 1e3:.1f} ms, dense with the same active "
              f"parameters {t['dense'] * 1e3:.1f} ms, ratio {t['moe'] / t['dense']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="", help="comma-separated; default all")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time forward+backward+AdamW")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd txblocks")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here; the GPU comparison (xformers / sdpa / eager "
              "kernels vs Hugging Face) is skipped")
        return
    wanted = set(filter(None, args.families.split(",")))
    print(f"machine: {machine()}")
    print(f"batch {args.batch}, sequence {args.seq_len}, median of {args.repeats} interleaved repeats")
    rates = {name: matmul_rate(dtype, device=args.device) for name, dtype in DTYPES.items()}
    for name, rate in rates.items():
        print(f"matrix-multiply rate {name}: {rate / 1e9:.0f} GFLOP/s")
    print(f"{'family':14} {'type':4} {'':8} {'HF ms':>9} {'ours ms':>9} {'ours/HF':>7} "
          f"{'HF pk':>6} {'ours pk':>6} {'mem/HF':>6}")
    for family in families():
        if not wanted or family.name in wanted:
            bench_family(family, args, rates)
    if not wanted or "mixtral-small" in wanted:
        bench_moe_vs_dense(args)


def _has_xt() -> bool:
    try:
        import x_transformers  # noqa: F401
    except ImportError:
        print("(x-transformers not installed: `pip install txblocks[bench]` for its column)")
        return False
    return True


if __name__ == "__main__":
    main()
