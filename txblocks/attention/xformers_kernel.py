"""xformers ``memory_efficient_attention``: the fast kernel on CUDA.

xformers is optional (the ``cuda`` extra) and imported only when this kernel runs.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv = G kv heads (groups),
R = H / G query heads per group, D head_dim.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask

__all__ = ["XFormersKernel"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INSTALL_HINT = "install it with `pip install 'txblocks[cuda]'`"


#: Whether xformers can be imported, looked up once at import: `auto` asks on every call, and
#: a lookup per call costs file-system stats (and a functools cache would trip up dynamo).
_INSTALLED = importlib.util.find_spec("xformers") is not None


@functools.lru_cache(maxsize=None)
def _cuda_problem(device: str) -> str | None:
    """Run a tiny attention on ``device``; say why xformers cannot, or None when it can."""
    try:
        from xformers.ops import memory_efficient_attention
    except Exception as exc:  # not installed, or broken against this torch
        return f"xformers failed to import ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
    try:
        x = torch.randn(1, 8, 1, 16, device=device, dtype=torch.float16)
        with torch.no_grad():
            memory_efficient_attention(x, x, x)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            f"xformers' CUDA kernels cannot run on {device} ({type(exc).__name__}: {first}); "
            "run `python -m xformers.info`, and install an xformers build matching "
            f"torch {torch.__version__}, or use kernel 'sdpa'"
        )
    return None


def _dense(bias: Tensor, batch: int, heads: int, groups: int) -> Tensor:
    """``bias (B|1, H|1, Tq, Tk)`` as xformers takes it: (B, H, Tq, Tk), or (B, G, R, Tq, Tk)
    with grouped K/V heads, on memory whose rows hold a multiple of 8 elements (xformers
    needs the bias strides aligned to 16 bytes)."""
    k_len = bias.shape[-1]
    padded = F.pad(bias, (0, -k_len % 8))  # (B|1, H|1, Tq, Tk + pad), contiguous
    dense = padded[..., :k_len].expand(batch, heads, -1, -1)
    return dense if groups == heads else rearrange(dense, "b (g r) q k -> b g r q k", g=groups)


class XFormersKernel(AttentionKernel):
    """xformers ``memory_efficient_attention`` (CUDA only; fp16, bf16 or fp32; no softcap).

    Rabe & Staats 2021, "Self-attention Does Not Need O(n²) Memory"; Dao et al.
    2022, "FlashAttention". Masks become xformers' own ``AttentionBias`` classes
    where one matches exactly, else a dense additive tensor (padded so its rows
    are 16-byte aligned). Grouped K/V heads use xformers' 5-D (B, T, G, R, D)
    layout with K/V expanded over R; block-diagonal biases run on the batch
    flattened to (1, B*T). See https://facebookresearch.github.io/xformers/components/ops.html
    """

    name = "xformers"
    priority = 100

    def why_not_on(self, device: torch.device) -> list[str]:
        device = torch.device(device)
        if device.type != "cuda":
            reasons = [
                f"xformers runs on CUDA GPUs only, and this model is on {device.type!r}; "
                "use kernel 'sdpa' (or 'auto', which picks the best kernel available)"
            ]
            if not _INSTALLED:
                reasons.append(f"xformers is not installed; {_INSTALL_HINT}")
            return reasons
        if device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        problem = _cuda_problem(str(device))
        return [problem] if problem else []

    def why_not(self, call: AttentionCall) -> list[str]:
        reasons = super().why_not(call)
        if call.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            reasons.append(f"dtype {call.dtype} is not supported by xformers (only {names})")
        if (
            call.dtype == torch.bfloat16
            and call.device.type == "cuda"
            and torch.cuda.is_available()
            and torch.cuda.get_device_capability(call.device)[0] < 8
        ):
            reasons.append("bfloat16 needs an Ampere (sm80) or newer GPU; use float16")
        if call.softcap is not None:
            reasons.append(
                "softcap (logit soft-capping) is not supported by xformers "
                "memory_efficient_attention; use kernel 'eager'"
            )
        return reasons

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        *,
        scale: float,
        dropout: float,
        softcap: float | None,
    ) -> Tensor:
        from xformers.ops import memory_efficient_attention
        from xformers.ops.fmha import attn_bias as ab

        batch, _, heads, _ = q.shape
        groups = k.shape[2]
        device = q.device
        bias = mask.xformers(q.dtype, device)
        flat = isinstance(bias, ab.BlockDiagonalMask)  # describes the batch flattened to (1, B*T)
        if flat and bias.q_seqinfo.seqstart_py[-1] != batch * q.shape[1]:
            bias, flat = mask.additive(q.dtype, device), False  # seq_lens broadcast over rows
        if isinstance(bias, Tensor):
            bias = _dense(bias, batch, heads, groups)
        elif isinstance(bias, ab.LowerTriangularMaskWithTensorBias):
            bias = ab.LowerTriangularMaskWithTensorBias(_dense(bias._bias, batch, heads, groups))
        if flat:
            q, k, v = (rearrange(t, "b t h d -> 1 (b t) h d") for t in (q, k, v))
        if groups != heads:  # GQA: (B, T, G, R, D), K/V expanded over R
            q = rearrange(q, "b t (g r) d -> b t g r d", g=groups)
            k, v = (t[:, :, :, None].expand(-1, -1, -1, heads // groups, -1) for t in (k, v))
        out = memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout, scale=scale)
        if groups != heads:
            out = rearrange(out, "b t g r d -> b t (g r) d")
        if flat:
            out = rearrange(out, "1 (b t) h d -> b t h d", b=batch)
        empty = mask.empty_rows(device)  # (B|1, 1, Tq, 1)
        if empty is not None:
            out = out.masked_fill(rearrange(empty, "b 1 t 1 -> b t 1 1"), 0.0)
        return out
