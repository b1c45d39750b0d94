"""What each fast path buys: a GPT-2-small forward with one of them switched off at a time.

Run by hand: `.venv/bin/python benchmarks/ablations.py [--seq-len 512] [--dtype bf16]`.
Every variant has the same weights and is timed in the same run, interleaved with the
default model; the table gives each variant's time relative to the default:

- `fused_qkv: false`: three q/k/v matrix products instead of one;
- `materialized causal mask`: an all-ones attention_mask, so SDPA gets the dense additive
  mask instead of `is_causal=True`;
- `masks per layer`: the mask's dense forms rebuilt in every layer instead of once per
  forward (what the memo in `AttentionMask` saves);
- `eager kernel`: the plain-math reference instead of SDPA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine  # noqa: E402

import txblocks  # noqa: E402
from txblocks.attention.mask import AttentionMask  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def variant(base: torch.nn.Module, **attention: object) -> torch.nn.Module:
    """``base`` rebuilt with these attention fields, carrying its weights over."""
    data = base.spec.model_dump(mode="json")
    data["block"]["attention"].update(attention)
    model = txblocks.build(data).eval()
    state = base.state_dict()
    if attention.get("fused_qkv") is False:
        for i in range(len(base.blocks)):
            prefix = f"blocks.{i}.attention."
            for part in ("weight", "bias"):
                q, k, v = state.pop(prefix + f"qkv.{part}").chunk(3)
                state.update({prefix + f"q.{part}": q, prefix + f"k.{part}": k,
                              prefix + f"v.{part}": v})
    model.load_state_dict(state)
    return model


class _NoMemo:
    """Within the block, masks forget their dense forms (rebuilt for every layer)."""

    def __enter__(self) -> None:
        self.saved = AttentionMask._cached
        AttentionMask._cached = lambda self, key, make: make()  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        AttentionMask._cached = self.saved  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    base = txblocks.build("examples/specs/gpt2.yaml").eval()
    variants = {
        "fused_qkv: false": variant(base, fused_qkv=False),
        "eager kernel": variant(base, kernel="eager"),
    }
    ids = torch.randint(0, base.spec.vocab_size, (args.batch, args.seq_len))
    ones = torch.ones_like(ids)

    def no_memo() -> None:
        with _NoMemo():
            base(ids, ones)

    fns = {
        "default": lambda: base(ids),
        **{name: (lambda m=m: m(ids)) for name, m in variants.items()},
        "materialized causal mask": lambda: base(ids, ones),
        "masks per layer (with that mask)": no_memo,
    }
    for model in (base, *variants.values()):
        model.to(dtype)
    with torch.no_grad():
        times = compare(fns, repeats=args.repeats)
    print(f"GPT-2 small forward, batch {args.batch}, sequence {args.seq_len}, {args.dtype}")
    print(f"{'variant':34} {'ms':>9} {'vs default':>10}")
    for name, seconds in times.items():
        print(f"{name:34} {seconds * 1e3:9.1f} {seconds / times['default']:10.2f}")


if __name__ == "__main__":
    main()
