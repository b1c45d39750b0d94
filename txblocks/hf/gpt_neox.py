"""GPT-NeoX (``GPTNeoXModel``, ``GPTNeoXForCausalLM``) <-> a parallel decoder with partial RoPE.

A GPT-NeoX block is ``x + attn(ln1(x)) + mlp(ln2(x))`` (``use_parallel_residual``; else
pre-norm), RoPE on the first ``partial_rotary_factor`` of each head (halves paired, as
Llama). Its ``query_key_value`` is fused per head: rows ``(H, 3, D)``, each head's q, k, v
together, where txblocks' ``qkv`` holds all queries, then all keys, then all values.
:class:`GroupedQKV` regroups the rows; it serves Falcon's layouts too (rows
``(Hkv, H / Hkv + 2, D)``: a group's queries, then its key and value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from txblocks.hf.decoder_common import config_sizes, decoder_sizes, qkv_bias
from txblocks.hf.family import ConfigView, activation, causal_lm_family, ffn_hidden, hf_activation
from txblocks.hf.llama import rope, rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["GPT_NEOX", "GroupedQKV", "partial_rope", "partial_rope_parameters"]


@dataclass(frozen=True)
class _Regrouped:
    """GroupedQKV for one model: H query heads, Hkv key/value heads of D dims."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    arity: ClassVar[int] = 1

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        x = tensors[0]  # (Hkv·(r + 2)·D, ...) -> (Hkv, r + 2, D, ...)
        rest, r = x.shape[1:], self.n_heads // self.n_kv_heads
        groups = x.reshape(self.n_kv_heads, r + 2, self.head_dim, *rest)
        q = groups[:, :r].reshape(-1, *rest)
        k, v = groups[:, r].reshape(-1, *rest), groups[:, r + 1].reshape(-1, *rest)
        return torch.cat([q, k, v], dim=0)

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        rest, r, d = tensor.shape[1:], self.n_heads // self.n_kv_heads, self.head_dim
        kv = self.n_kv_heads * d
        q, k, v = tensor.split([self.n_heads * d, kv, kv], dim=0)
        parts = [q.reshape(self.n_kv_heads, r, d, *rest),
                 k.reshape(self.n_kv_heads, 1, d, *rest), v.reshape(self.n_kv_heads, 1, d, *rest)]
        return [torch.cat(parts, dim=1).reshape(tensor.shape)]


@dataclass(frozen=True)
class GroupedQKV:
    """A fused qkv grouped per key/value head (HF rows ``(Hkv, H / Hkv + 2, D)``: a group's
    ``H / Hkv`` queries, its key, its value) <-> txblocks' ``qkv`` (all q, all k, all v).

    GPT-NeoX is the case ``Hkv = H`` (rows ``(H, 3, D)``), Falcon's multi-query layout the
    case ``Hkv = 1``. The shape comes from the txblocks spec (``bind``).
    """

    arity: ClassVar[int] = 1

    def bind(self, spec: Any) -> _Regrouped:
        if spec is None:
            raise ValueError("GroupedQKV needs the txblocks model's spec (its heads)")
        return _Regrouped(spec.n_heads, spec.kv_heads, spec.head_size)

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        raise ValueError("GroupedQKV needs bind(spec) first")

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        raise ValueError("GroupedQKV needs bind(spec) first")


class _RopeView:
    """``view`` whose ``rope_parameters`` lack ``partial_rotary_factor`` (for llama's ``rope``)."""

    def __init__(self, view: ConfigView, params: dict[str, Any]) -> None:
        self._view, self._params = view, params

    def get(self, key: str, default: Any = None) -> Any:
        return self._params if key == "rope_parameters" else self._view.get(key, default)

    def unsupported(self, key: str, why: str) -> None:
        self._view.unsupported(key, why)


def partial_rope(c: ConfigView, head_dim: int) -> dict[str, Any]:
    """The ``position`` of a config whose ``rope_parameters`` may rotate part of each head
    (``partial_rotary_factor``: ``int(head_dim · factor)`` dims, as txblocks' ``fraction``)."""
    params = dict(c.get("rope_parameters") or {})
    fraction = params.pop("partial_rotary_factor", 1.0)
    position = rope(_RopeView(c, params))  # type: ignore[arg-type]
    rotary_dim = int(head_dim * fraction)
    if not 0 < fraction <= 1 or rotary_dim <= 0 or rotary_dim % 2:
        why = (f"partial_rotary_factor {fraction!r} rotates int({head_dim} · {fraction!r}) = "
               f"{rotary_dim} dims of each head; txblocks rotates an even, positive number")
        c.unsupported("rope_parameters", why)  # fmt: skip
        fraction = 1.0
    return {**position, "fraction": fraction}


def partial_rope_parameters(position: Any) -> dict[str, Any]:
    """HF ``rope_parameters`` of a spec's ``position``, with ``partial_rotary_factor``."""
    return {**rope_parameters(position),
            "partial_rotary_factor": getattr(position, "fraction", 1.0)}  # fmt: skip


WEIGHTS = (
    Rule("embed_in.weight", "embeddings.tokens.weight"),
    Rule("layers.{i}.input_layernorm.{p}", "blocks.{i}.norm1.{p}"),
    Rule("layers.{i}.post_attention_layernorm.{p}", "blocks.{i}.norm2.{p}"),
    Rule("layers.{i}.attention.query_key_value.{p}", "blocks.{i}.attention.qkv.{p}",
         GroupedQKV()),
    Rule("layers.{i}.attention.dense.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("layers.{i}.mlp.dense_h_to_4h.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("layers.{i}.mlp.dense_4h_to_h.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("final_layer_norm.{p}", "final_norm.{p}"),
)  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a GPTNeoXConfig (without head)."""
    d_model, n_heads = c.hidden_size, c.num_attention_heads
    return {
        **decoder_sizes(c),
        "position": partial_rope(c, d_model // n_heads),
        "embedding": {"dropout": c.hidden_dropout},
        "block": {
            "layout": "parallel" if c.use_parallel_residual else "pre_norm",
            "norm": {"type": "layernorm", "eps": c.layer_norm_eps},
            "attention": {"mask": "causal", "bias": bool(c.attention_bias), "fused_qkv": True,
                          "dropout": c.attention_dropout},
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True,
                    "activation": activation(c, "hidden_act"), "dropout": 0.0},
            "dropout": c.hidden_dropout,
        },
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """GPTNeoXConfig fields of a spec (checked by converting back)."""
    block = s.block
    attention = block.attention
    return {
        **config_sizes(s, None),
        "rope_parameters": partial_rope_parameters(s.position),
        "use_parallel_residual": block.layout == "parallel",
        "layer_norm_eps": getattr(block.norm, "eps", 1e-5),
        "attention_bias": qkv_bias(s),
        "attention_dropout": attention.dropout,
        "hidden_dropout": block.dropout,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None)),
        "initializer_range": s.init_std,
    }


GPT_NEOX = causal_lm_family(
    "gpt_neox", "GPTNeoX", spec, config, WEIGHTS,
    ignored={
        "classifier_dropout": "read only by the classification heads",
        "is_decoder": "transformers 5's GPT-NeoX model never reads it (always causal)",
    },
)
