"""Llama, Mistral and Qwen2 <-> a pre-norm RMSNorm decoder with RoPE, SwiGLU and GQA.

The three share one set of weight rules: ``q_proj``, ``k_proj``, ``v_proj`` are fused into
``qkv`` (rows q, k, v) and ``gate_proj``, ``up_proj`` into the GLU's ``gate_up`` (gate rows
first). They differ in their options:

* Llama: ``attention_bias`` (q, k, v and o), ``mlp_bias``, rope scaling
  (``default``, ``linear``, ``dynamic``, ``llama3``).
* Mistral: ``sliding_window`` on every layer (``query i sees keys i - w < j <= i``, as
  in txblocks' ``sliding_window`` mask).
* Qwen2: bias on q, k, v only; sliding windows on the layers ``layer_types`` names
  ``sliding_attention`` (derived from ``use_sliding_window`` and ``max_window_layers``),
  as per-layer overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txblocks.hf.decoder_common import EMBED_TOKENS, QKV, attention, decoder_config, glu, qkv_bias
from txblocks.hf.decoder_common import sizes
from txblocks.hf.family import ConfigView, HFFamily, causal_lm_family
from txblocks.hf.rules import Rule

__all__ = ["LLAMA", "MISTRAL", "QWEN2"]

WEIGHTS = (
    EMBED_TOKENS,
    QKV,
    Rule("layers.{i}.self_attn.o_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule(
        ("layers.{i}.mlp.gate_proj.{p}", "layers.{i}.mlp.up_proj.{p}"),
        "blocks.{i}.ffn.gate_up.{p}",
        "concat",
    ),
    Rule("layers.{i}.mlp.down_proj.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("layers.{i}.input_layernorm.weight", "blocks.{i}.norm1.weight"),
    Rule("layers.{i}.post_attention_layernorm.weight", "blocks.{i}.norm2.weight"),
    Rule("norm.weight", "final_norm.weight"),
)

#: The rules without the norms', for the families that norm elsewhere.
PROJECTIONS = tuple(rule for rule in WEIGHTS if "norm" not in rule.tx)

# rope_type -> {HF key: txblocks scaling key}
_SCALINGS = {
    "default": {},
    "linear": {"factor": "factor"},
    "dynamic": {"factor": "factor"},
    "llama3": {
        "factor": "factor", "low_freq_factor": "low_freq_factor",
        "high_freq_factor": "high_freq_factor",
        "original_max_position_embeddings": "original_max_seq_len",
    },
}  # fmt: skip


def _rope_parameters(c: ConfigView) -> dict[str, Any]:
    """``rope_parameters`` (transformers 5), or ``rope_scaling`` + ``rope_theta`` (4.x)."""
    params = c.get("rope_parameters")
    if params is None:
        params = dict(c.get("rope_scaling") or {})
        params.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    params = dict(params)
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


def rope(c: ConfigView) -> dict[str, Any]:
    """The ``position`` of the spec; every unknown rope key is reported."""
    params = _rope_parameters(c)
    rope_type = params.pop("rope_type")
    theta = params.pop("rope_theta", 10000.0)
    position: dict[str, Any] = {"type": "rope", "theta": theta, "fraction": 1.0}
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        why = "partial_rotary_factor: HF's Llama-family attention rotates whole heads"
        c.unsupported("rope_parameters", why)
    if rope_type not in _SCALINGS:
        why = f"rope_type {rope_type!r}; supported: {', '.join(_SCALINGS)}"
        c.unsupported("rope_parameters", why)
        return position
    keys = _SCALINGS[rope_type]
    if rope_type in ("default", "linear", "dynamic"):
        params.pop("original_max_position_embeddings", None)  # HF does not read it for these
    if keys:
        scaling = {keys[k]: params.pop(k) for k in keys if k in params}
        position["scaling"] = {"type": rope_type, **scaling}
    for key in sorted(params):
        why = f"{key}={params[key]!r} is not mapped for rope_type {rope_type!r}"
        c.unsupported("rope_parameters", why)
    return position


def rope_parameters(position: Any) -> dict[str, Any]:
    """HF ``rope_parameters`` of a spec's ``position`` (best effort)."""
    out = {"rope_type": "default", "rope_theta": getattr(position, "theta", 10000.0)}
    scaling = getattr(position, "scaling", None)
    if scaling is not None:
        out["rope_type"] = scaling.type
        for hf_key, key in _SCALINGS.get(scaling.type, {}).items():
            out[hf_key] = getattr(scaling, key)
    return out


def _window(window: int | None) -> Any:
    return "causal" if window is None else {"type": "sliding_window", "window": window}


def _spec(
    c: ConfigView,
    *,
    qkv_bias: bool,
    out_bias: bool,
    mlp_bias: bool,
    mask: Any,
    layers: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        **sizes(c),
        "position": rope(c),
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "rmsnorm", "eps": c.rms_norm_eps},
            "attention": attention(c, mask, qkv_bias=qkv_bias, out_bias=out_bias),
            "ffn": glu(c, bias=mlp_bias),
            "dropout": 0.0,
        },
        "embedding": {"dropout": 0.0},
        "layers": layers,
        "init_std": c.initializer_range,
    }  # fmt: skip


def _common_config(s: Any) -> dict[str, Any]:
    return {
        **decoder_config(s),
        "head_dim": s.head_size,
        "rope_parameters": rope_parameters(s.position),
        "rms_norm_eps": getattr(s.block.norm, "eps", 1e-6),
    }


def _windows(s: Any) -> list[int | None]:
    """Each layer's sliding window (None for plain causal)."""
    return [getattr(s.block_for(i).attention.mask, "window", None) for i in range(s.n_layers)]


def single_window(s: Any) -> int | None:
    """The one sliding window of every layer (None where there is none, or several)."""
    windows = set(_windows(s))
    return windows.pop() if len(windows) == 1 else None


def layer_windows(c: ConfigView) -> tuple[Any, list[dict[str, Any]]]:
    """The block's mask and the ``layers:`` overrides of ``layer_types`` (full and sliding
    attention; other types are problems)."""
    window, types = c.sliding_window, list(c.layer_types or [])
    for kind in sorted(set(types) - {"full_attention", "sliding_attention"}):
        why = f"layer type {kind!r}; supported: full_attention, sliding_attention"
        c.unsupported("layer_types", why)
    sliding = [i for i, kind in enumerate(types) if kind == "sliding_attention"]
    if sliding and window is None:
        c.unsupported("layer_types", "names sliding_attention layers but sliding_window is None")
        sliding = []
    if sliding and len(sliding) == c.num_hidden_layers:
        return _window(window), []
    layers = [{"select": sliding, "attention": {"mask": _window(window)}}] if sliding else []
    return "causal", layers


def layer_types_config(s: Any) -> dict[str, Any]:
    """``sliding_window`` (where the windowed layers share one) and ``layer_types`` of a spec."""
    windows = _windows(s)
    used = {w for w in windows if w is not None}
    return {
        "sliding_window": used.pop() if len(used) == 1 else None,
        "layer_types": ["full_attention" if w is None else "sliding_attention" for w in windows],
    }


# --- Llama ------------------------------------------------------------------------------


def llama_spec(c: ConfigView) -> dict[str, Any]:
    bias = bool(c.attention_bias)
    mlp_bias = bool(c.mlp_bias)
    return _spec(c, qkv_bias=bias, out_bias=bias, mlp_bias=mlp_bias, mask="causal", layers=[])


def llama_config(s: Any) -> dict[str, Any]:
    mlp_bias = bool(getattr(s.block.ffn, "bias", False))
    return {**_common_config(s), "attention_bias": qkv_bias(s), "mlp_bias": mlp_bias}


# --- Mistral ----------------------------------------------------------------------------


def mistral_spec(c: ConfigView) -> dict[str, Any]:
    return _spec(c, qkv_bias=False, out_bias=False, mlp_bias=False, mask=_window(c.sliding_window),
                 layers=[])  # fmt: skip


def mistral_config(s: Any) -> dict[str, Any]:
    return {**_common_config(s), "sliding_window": single_window(s)}


# --- Qwen2 ------------------------------------------------------------------------------


def qwen2_spec(c: ConfigView) -> dict[str, Any]:
    for folded in ("use_sliding_window", "max_window_layers"):  # HF folds them into layer_types
        c.get(folded)
    mask, layers = layer_windows(c)
    return _spec(c, qkv_bias=True, out_bias=False, mlp_bias=False, mask=mask, layers=layers)


def qwen2_config(s: Any) -> dict[str, Any]:
    sliding = [w is not None for w in _windows(s)]
    first = next((i for i, x in enumerate(sliding) if x), len(sliding))
    return {**_common_config(s), "use_sliding_window": any(sliding), **layer_types_config(s),
            "max_window_layers": first}  # fmt: skip


def _family(
    name: str,
    prefix: str,
    spec: Callable[[ConfigView], dict[str, Any]],
    config: Callable[[Any], dict[str, Any]],
    *,
    weights: tuple[Rule, ...] = WEIGHTS,
    ignored: dict[str, str] | None = None,
) -> HFFamily:
    """A decoder family of the Llama kind: ``{prefix}Model`` and ``{prefix}ForCausalLM``."""
    if ignored is None:
        ignored = {"pretraining_tp": "transformers 5 ignores it; 4.x slices the same products"}
    return causal_lm_family(name, prefix, spec, config, weights, ignored=ignored)


LLAMA = _family("llama", "Llama", llama_spec, llama_config)
MISTRAL = _family("mistral", "Mistral", mistral_spec, mistral_config)
QWEN2 = _family("qwen2", "Qwen2", qwen2_spec, qwen2_config)
