"""Greedy decoding speed: txblocks vs Hugging Face `generate` on the same GPT-2-small weights.

Run by hand: `.venv/bin/python benchmarks/generate.py [--new-tokens 64] [--prompt 32]`.
Prints tokens/s for batch 1 and 8 in fp32 and bf16, the ratio to Hugging Face measured
in the same run, and the weight-streaming bound: a decoding step must read every weight
once, so tokens/s ≤ bandwidth / weight bytes, with the bandwidth measured here too as the
rate of a plain streaming read of as many bytes (`w.sum()` over 4096² blocks: what memory
delivers, which no kernel reading the weights once can beat; aten's matrix-vector products
reach only 50-70 % of it on a 2-core EPYC).

A second table has txblocks' int8 models (`txblocks.quantize`, torchao; needs
`pip install 'txblocks[quant]'`), made from the fp32 model: tokens/s, the ratio to Hugging
Face fp32, the bound for their bytes (int8 linear weights, float rest, the float embedding
table left out: it is read a row per step), and `agree`, the greedy-token agreement with the
fp32 model: the fp32 model's greedy continuation is fed to the int8 model in one forward, and
`agree` is the share of the new tokens that the int8 model would have picked too (teacher
forcing, so one early difference does not count as all the later ones). The targets of the
int8 weight-only row are ≥ 2× Hugging Face fp32 and ≥ 95 % agreement at batch 1.

`--compile` adds txblocks' compiled decoding (`generate(compile=True)`: an eager prefill, then
one `torch.compile`d static-shape step per token) beside eager txblocks and Hugging Face, with
its compile time (the first call's time less a warm call's) and its share of the bound; the
issue-14 targets are ≥ 90 % of the bound in fp32 and ≥ 85 % in bf16, batch 1. Those rates
include the eager prefill, as Hugging Face's do; `step tok/s` is the compiled steps' own rate
(the time of the generation less that of a generation of one token, which is the prefill).
In the int8
table `--compile` adds the compiled int8 model, timed in turn with Hugging Face fp32
(`HF fp32*`, the ratio's reference), and `same as eager`, the share of the compiled
model's greedy tokens that the eager int8 model picks too given the same prefix (teacher
forcing, as `agree`: on random GPT-2 weights the top two logits often tie in bfloat16, and
one tie broken the other way changes every later token). With
`--compile` the bound is also measured interleaved with the contenders (`bound*`: the same
bytes read as many times as there are new tokens, timed in turn
with them), which a busy machine's drifting bandwidth does not skew: the `/bound*` ratios are
medians of repeat-by-repeat ratios, each contender's run against the read timed beside it
(this machine's memory jumps between about 30 and about 50 GB/s for seconds at a time, so a
ratio of two medians can pair a slow spell with a fast one). `step/bound*` is the compiled
steps' own rate so compared; these paired ratios are the ones the targets are read from.

`--hf-static` (with `--compile`) adds Hugging Face's own compiled decoding as a second
reference: `generate(cache_implementation="static")`, which compiles its forward
(`torch.compile`, CUDA graphs on a GPU) where transformers allows it.

`--device cuda --model llama-1b --dtypes bf16 --batches 1 --compile --hf-static` is the
GPU target of issue 14: a Llama-shaped 1.1B model (d 2048, 16 layers, GQA 32/8, SwiGLU
8192, vocabulary 32 000, random weights), batch 1; txblocks' compiled step is replayed as a
CUDA graph there. The targets are ≥ 40 % of the bound and ≥ 5× Hugging Face's eager
`generate`. The int8 table runs on CPU only.

`--n-layer/--n-embd/--n-head` shrink the model for a quick check that the script runs;
`--dtypes` and `--batches` pick the rows, `--threads` the torch threads.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, compare_runs, machine, paired_median, read_bandwidth, read_blocks  # noqa: E402

import txblocks  # noqa: E402
from txblocks.quantize import stored_bytes  # noqa: E402

QUANT_MODES = ("int8_weight_only", "int8_dynamic")


def hf_model(name: str, n_layer: int | None, n_embd: int | None, n_head: int | None) -> nn.Module:
    """GPT-2 small or a Llama-shaped 1.1B with random weights (fp32, CPU), optionally shrunk."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "gpt2":
        sizes = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head}
        return GPT2LMHeadModel(GPT2Config(**{k: v for k, v in sizes.items() if v})).eval()
    width, heads = n_embd or 2048, n_head or 32
    config = LlamaConfig(hidden_size=width, num_hidden_layers=n_layer or 16,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         intermediate_size=4 * width, vocab_size=32000,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def hf_static_generate(hf: nn.Module, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Hugging Face's compiled decoding: a static cache, and its forward compiled (transformers
    compiles it by itself on CUDA; elsewhere it is asked to)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told
    return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0, cache_implementation="static",
                       compile_config=config)


def streamed_bytes(model: nn.Module) -> int:
    """Bytes a decoding step reads: every parameter once, except embedding tables (tokens,
    learned positions) that the head does not share (a lookup reads one row); int8 weights
    count as stored."""
    head = model.head.proj.weight
    looked_up = {id(m.weight) for m in model.modules()
                 if isinstance(m, nn.Embedding) and m.weight is not head}
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if id(p) not in looked_up:
            total += stored_bytes(p)  # int8 data and one float scale per row for int8 weights
    return total


def streaming(n_bytes: int, dtype: torch.dtype, steps: int, device: str = "cpu"):
    """A run that reads about ``n_bytes`` of weights (summing :func:`read_blocks`) ``steps``
    times, as ``steps`` decoding steps at the bound would; and the bytes it reads.

    Timed with the contenders, repeat by repeat, the bound shares their slow spells: on a
    busy machine a bandwidth measured once, apart, is not the one the contenders had."""
    blocks, read = read_blocks(n_bytes, dtype, device=device)

    def run() -> None:
        for _ in range(steps):
            for w in blocks:
                w.sum()

    return run, read


def agreement(model: nn.Module, ids: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of ``reference``'s new tokens (after ``ids``) that ``model`` picks greedily
    given the same prefix."""
    with torch.no_grad():
        logits = model(reference[:, :-1]).logits
    chosen = logits[:, ids.shape[1] - 1:].argmax(-1)
    return float((chosen == reference[:, ids.shape[1]:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--n-layer", type=int, help="GPT-2 layers (default 12)")
    parser.add_argument("--n-embd", type=int, help="GPT-2 width (default 768)")
    parser.add_argument("--n-head", type=int, help="GPT-2 heads (default 12)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 table")
    parser.add_argument("--int8-modes", nargs="+", default=list(QUANT_MODES), choices=QUANT_MODES,
                        help="the rows of the int8 table")
    parser.add_argument("--compile", action="store_true",
                        help="add txblocks' compiled decoding (generate(compile=True))")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="gpt2", choices=["gpt2", "llama-1b"])
    parser.add_argument("--hf-static", action="store_true",
                        help="with --compile: add Hugging Face's static-cache compiled generate")
    args = parser.parse_args()
    device = args.device
    if device == "cuda":
        args.no_int8 = True  # the int8 table is a CPU table
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    hf_fp32 = hf_model(args.model, args.n_layer, args.n_embd, args.n_head)
    # an fp32 copy kept apart: the loop below casts hf_fp32 to bf16 in place
    hf_reference = copy.deepcopy(hf_fp32) if args.compile and not args.no_int8 else None
    vocab = hf_fp32.config.vocab_size
    ours_fp32 = txblocks.from_hf(hf_fp32).eval()
    if device != "cpu":  # the int8 models and references below are made on CPU first
        hf_fp32, ours_fp32 = hf_fp32.to(device), ours_fp32.to(device)
    torch.manual_seed(1)
    prompts = {batch: torch.randint(0, vocab, (batch, args.prompt), device=device)
               for batch in args.batches}
    n = args.new_tokens
    quantized, references = {}, {}
    if not args.no_int8:  # made now: the loop below casts the fp32 models to bf16 in place
        quantized = {m: txblocks.quantize(copy.deepcopy(ours_fp32), m) for m in args.int8_modes}
        with torch.no_grad():
            references = {b: ours_fp32.generate(ids, max_new_tokens=n)
                          for b, ids in prompts.items()}
    hf_fp32_rates: dict[int, float] = {}
    # on a GPU: 4 GiB of weights, far above its L2 cache
    big = {"device": device, "total_bytes": 4 * 2**30} if device != "cpu" else {}
    fp32_bandwidth = read_bandwidth(torch.float32, **big)
    header = (f"{'dtype':6} {'batch':>5} {'HF tok/s':>9} {'ours tok/s':>10} {'ours/HF':>8} "
              f"{'bound tok/s':>11} {'ours/bound':>10}")
    if args.compile:
        header += (f" {'compiled tok/s':>14} {'compiled/HF':>11} {'compiled/bound':>14} "
                   f"{'compile s':>9} {'bound* tok/s':>12} {'ours/bound*':>11} {'compiled/bound*':>15}"
                   f" {'step tok/s':>10} {'step/bound':>10} {'step/bound*':>11}")
    if args.compile and args.hf_static:
        header += f" {'HF static tok/s':>15} {'compiled/HF static':>18}"
    print(header)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for dtype in (dtypes[name] for name in args.dtypes):
        hf = hf_fp32.to(dtype)
        ours = ours_fp32.to(dtype)
        bandwidth = fp32_bandwidth if dtype is torch.float32 else read_bandwidth(dtype, **big)
        bound = bandwidth / streamed_bytes(ours)  # ours is in `dtype` now
        for batch, ids in prompts.items():
            mask = torch.ones_like(ids)

            def run_hf() -> None:
                hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=0)

            def run_ours() -> None:
                ours.generate(ids, mask, max_new_tokens=n)

            def run_compiled() -> None:
                ours.generate(ids, mask, max_new_tokens=n, compile=True)

            fns = {"hf": run_hf, "ours": run_ours}
            first, read, static_problem = 0.0, 1, None
            if args.compile:
                fns["bound"], read = streaming(streamed_bytes(ours), dtype, n, device=device)
                start = time.perf_counter()
                run_compiled()  # compiles the step for this (batch, cache length, dtype)
                first = time.perf_counter() - start
                fns["compiled"] = run_compiled
                # the prefill and the first token alone: what the compiled steps add to it is
                # their own time
                fns["prefill"] = lambda: ours.generate(ids, mask, max_new_tokens=1, compile=True)
            if args.compile and args.hf_static:
                def run_hf_static() -> None:
                    hf_static_generate(hf, ids, mask, n)

                try:  # compiles Hugging Face's forward for these shapes
                    with torch.no_grad():
                        run_hf_static()
                    fns["hf_static"] = run_hf_static
                except Exception as exc:  # a reference that does not run here is reported, not fatal
                    static_problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            with torch.no_grad():
                runs = compare_runs(fns, repeats=args.repeats)
            t = {name: statistics.median(ts) for name, ts in runs.items()}
            t_hf, t_ours = t["hf"], t["ours"]
            hf_rate, our_rate = batch * n / t_hf, batch * n / t_ours
            if dtype is torch.float32:
                hf_fp32_rates[batch] = hf_rate
            row = (f"{str(dtype).removeprefix('torch.'):6} {batch:5d} {hf_rate:9.1f} {our_rate:10.1f} "
                   f"{our_rate / hf_rate:8.2f} {bound * batch:11.1f} {our_rate / (bound * batch):10.2f}")
            if args.compile:
                rate = batch * n / t["compiled"]
                # bound*: n reads of the weights at the bandwidth measured in turn with the
                # contenders (the run read `read` bytes n times); its ratios are taken repeat
                # by repeat, each against the read timed next to it
                at_bound = [b * streamed_bytes(ours) / read for b in runs["bound"]]
                bound_star = batch * n / statistics.median(at_bound)
                steps = [c - p for c, p in zip(runs["compiled"], runs["prefill"], strict=True)]
                step_rate = batch * (n - 1) / statistics.median(steps)
                step_star = paired_median([b * (n - 1) / n for b in at_bound], steps)
                row += (f" {rate:14.1f} {rate / hf_rate:11.2f} {rate / (bound * batch):14.2f} "
                        f"{first - t['compiled']:9.1f} {bound_star:12.1f} "
                        f"{paired_median(at_bound, runs['ours']):11.2f} "
                        f"{paired_median(at_bound, runs['compiled']):15.2f} {step_rate:10.1f} "
                        f"{step_rate / (bound * batch):10.2f} {step_star:11.2f}")
            if args.compile and args.hf_static:
                if "hf_static" in t:
                    static_rate = batch * n / t["hf_static"]
                    row += f" {static_rate:15.1f} {rate / static_rate:18.2f}"
                else:
                    row += f"  HF static did not run: {static_problem}"
            print(row, flush=True)
    if not quantized or not hf_fp32_rates:
        return
    header = (f"\n{'int8 mode':16} {'batch':>5} {'ours tok/s':>10} {'ours/HF fp32':>12} "
              f"{'bound tok/s':>11} {'ours/bound':>10} {'agree':>6}")
    if args.compile:
        header += (f" {'HF fp32*':>8} {'compiled tok/s':>14} {'compiled/HF fp32*':>17} "
                   f"{'compiled/bound':>14} {'same as eager':>13} {'compile s':>9}")
    print(header)
    for mode, model in quantized.items():
        bound = fp32_bandwidth / streamed_bytes(model)
        for batch, ids in prompts.items():
            mask = torch.ones_like(ids)
            fns = {"ours": lambda: model.generate(ids, mask, max_new_tokens=n)}
            first = 0.0
            if args.compile:
                def run_hf_fp32() -> None:
                    hf_reference.generate(ids, attention_mask=mask, max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False, pad_token_id=0)

                def run_compiled() -> torch.Tensor:
                    return model.generate(ids, mask, max_new_tokens=n, compile=True)

                start = time.perf_counter()
                with torch.no_grad():
                    run_compiled()
                first = time.perf_counter() - start
                fns.update({"hf": run_hf_fp32, "compiled": run_compiled})
            with torch.no_grad():
                t = compare(fns, repeats=args.repeats)
            rate = batch * n / t["ours"]
            agree = agreement(model, ids, references[batch])
            row = (f"{mode:16} {batch:5d} {rate:10.1f} {rate / hf_fp32_rates[batch]:12.2f} "
                   f"{bound * batch:11.1f} {rate / (bound * batch):10.2f} {agree:6.1%}")
            if args.compile:
                hf_rate, compiled_rate = batch * n / t["hf"], batch * n / t["compiled"]
                with torch.no_grad():
                    same = agreement(model, ids, run_compiled())
                row += (f" {hf_rate:8.1f} {compiled_rate:14.1f} {compiled_rate / hf_rate:17.2f} "
                        f"{compiled_rate / (bound * batch):14.2f} {same:13.1%} "
                        f"{first - t['compiled']:9.1f}")
            print(row, flush=True)

if __name__ == "__main__":
    main()
