"""Forward and training-step time: txblocks vs Hugging Face (same weights) vs x-transformers.

Run by hand: `make bench` or `.venv/bin/python benchmarks/speed.py [--families gpt2-small,...]`.
Per family and dtype it prints medians over interleaved repeats, the ratio to Hugging Face
and to x-transformers (same shapes, its own weights) measured in the same run, each
forward's share of this machine's matrix-multiply rate (measured here too; FLOPs counted by
torch's FlopCounterMode), and the forward's peak memory relative to Hugging Face's. Then the
MoE model against a dense model with its active parameters. `--compile` adds compiled vs
eager. `--device cuda` runs on a GPU: every family forward and forward + backward (training
steps, always on), each txblocks attention kernel (xformers, sdpa, eager; a kernel that cannot
run a family says why) against Hugging Face's SDPA attention, TFLOP/s and peak memory; then a
long sliding-window context (Mistral-shaped, 32k tokens) against Hugging Face.
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
                run = runnable(kernel, lambda variant=variant: call(variant, x))
                if run is not None:
                    contenders[kernel] = run
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
        if args.device == "cuda":
            extra += (f" | HF {work / t['hf'] / 1e12:.1f}, ours {work / t['ours'] / 1e12:.1f} "
                      f"TFLOP/s, ours peak {peak_bytes(lambda: call(ours, x)) / 2**30:.2f} GiB")
        print(f"{family.name:14} {name:4} {'forward':8} {t['hf'] * 1e3:9.1f} {t['ours'] * 1e3:9.1f} "
              f"{t['ours'] / t['hf']:7.2f} {work / t['hf'] / rates[name]:6.0%} "
              f"{work / t['ours'] / rates[name]:6.0%} {memory:6.2f}{extra}")
        if args.train or args.device == "cuda":
            hf.train(), ours.train()
            steps = {"hf": train_step(hf, x, dtype), "ours": train_step(ours, x, dtype)}
            t = compare(steps, repeats=args.repeats)
            hf.eval(), ours.eval()
            rate = (f"  ~{3 * work / t['hf'] / 1e12:.1f} / {3 * work / t['ours'] / 1e12:.1f} TFLOP/s"
                    " (backward counted as 2 forwards)" if args.device == "cuda" else "")
            print(f"{family.name:14} {name:4} {'train':8} {t['hf'] * 1e3:9.1f} {t['ours'] * 1e3:9.1f} "
                  f"{t['ours'] / t['hf']:7.2f}{rate}")
        for model in (hf, ours, xt):
            if model is not None:
                model.float()


def runnable(kernel: str, fn: Callable[[], object]) -> Callable[[], object] | None:
    """``fn`` when one call runs; else None, printing why (a kernel that cannot run the call)."""
    from txblocks.errors import KernelUnavailableError

    try:
        with torch.no_grad():
            fn()
    except KernelUnavailableError as exc:
        print(f"  ({kernel} cannot run this family: {str(exc).splitlines()[0]})")
        return None
    return fn


def bench_long_window(args: argparse.Namespace) -> None:
    """Mistral-shaped, 4 layers, a 4096-token window over 32k tokens, bf16: Hugging Face's SDPA
    (a dense mask) against txblocks' auto (xformers' local-attention structure)."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(hidden_size=2048, num_hidden_layers=4, num_attention_heads=16,
                           num_key_value_heads=8, intermediate_size=5632, vocab_size=32000,
                           sliding_window=4096, max_position_embeddings=32768)
    torch.manual_seed(0)
    hf = MistralForCausalLM(config).eval()
    ours = txblocks.from_hf(hf).eval()
    hf.to(args.device, torch.bfloat16), ours.to(args.device, torch.bfloat16)
    x = {"input_ids": torch.randint(0, 32000, (1, 32768), device=args.device)}
    work = flops(ours, x)
    with torch.no_grad():
        t = compare({"hf": lambda: call(hf, x), "ours": lambda: call(ours, x)}, repeats=args.repeats)
        memory = {k: peak_bytes(lambda m=m: call(m, x)) / 2**30 for k, m in (("hf", hf), ("ours", ours))}
    print(f"sliding window 4096 over 32768 tokens (bf16): HF {t['hf'] * 1e3:.1f} ms "
          f"({work / t['hf'] / 1e12:.0f} TFLOP/s, {memory['hf']:.2f} GiB), ours "
          f"{t['ours'] * 1e3:.1f} ms ({work / t['ours'] / 1e12:.0f} TFLOP/s, "
          f"{memory['ours']:.2f} GiB): {t['hf'] / t['ours']:.1f}x faster than HF")


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
    if args.device == "cuda" and (not wanted or "long-window" in wanted):
        bench_long_window(args)


def _has_xt() -> bool:
    try:
        import x_transformers  # noqa: F401
    except ImportError:
        print("(x-transformers not installed: `pip install txblocks[bench]` for its column)")
        return False
    return True


if __name__ == "__main__":
    main()
