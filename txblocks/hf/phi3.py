"""Phi-3 (``Phi3Model``, ``Phi3ForCausalLM``) <-> a pre-norm RMSNorm decoder with fused qkv.

Phi-3 (Abdin et al. 2024) is Llama's block with two fused projections, which txblocks
fuses the same way: ``qkv_proj`` (rows q, k, v) is the attention's ``qkv`` and
``gate_up_proj`` (gate rows first, ``chunk(2)``) the GLU's ``gate_up``; both are copied
as they are. ``partial_rotary_factor`` rotates the first ``int(head_dim · factor)`` dims of
each head (``position.fraction``), ``sliding_window`` masks every layer, ``resid_pdrop``
drops both residual branches (``block.dropout``). Only the ``default`` rope is mapped
(``longrope``, Phi-3's 128k variants, is refused).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import EMBED_TOKENS, head_dim_field
from txblocks.hf.family import ConfigView
from txblocks.hf.llama import _common_config, _family, _rope_parameters, _spec, _window
from txblocks.hf.gpt_neox import partial_rope_parameters
from txblocks.hf.llama import rope, single_window
from txblocks.hf.rules import Rule

__all__ = ["PHI3", "RopeView", "partial_rope", "partial_rope_parameters"]

WEIGHTS = (
    EMBED_TOKENS,
    Rule("layers.{i}.self_attn.qkv_proj.weight", "blocks.{i}.attention.qkv.weight"),
    Rule("layers.{i}.self_attn.o_proj.weight", "blocks.{i}.attention.out.weight"),
    Rule("layers.{i}.mlp.gate_up_proj.weight", "blocks.{i}.ffn.gate_up.weight"),
    Rule("layers.{i}.mlp.down_proj.weight", "blocks.{i}.ffn.down.weight"),
    Rule("layers.{i}.input_layernorm.weight", "blocks.{i}.norm1.weight"),
    Rule("layers.{i}.post_attention_layernorm.weight", "blocks.{i}.norm2.weight"),
    Rule("norm.weight", "final_norm.weight"),
)


class RopeView:
    """A config view whose ``rope_parameters`` lack ``partial_rotary_factor``, kept apart
    as :attr:`fraction`, so that Llama's mappings (which refuse the factor) serve the
    families whose attention rotates part of each head (Phi-3, StableLM).

    HF rotates ``int(head_dim · factor)`` dims, as txblocks' ``fraction``; a factor that
    gives an odd or zero number of dims is reported (and :attr:`fraction` is then 1).
    """

    def __init__(self, view: ConfigView, head_dim: int) -> None:
        params = _rope_parameters(view)
        fraction = params.pop("partial_rotary_factor", None)
        if fraction is None:  # transformers 4.x kept it beside rope_theta
            fraction = view.get("partial_rotary_factor", 1.0)
        rotary_dim = int(head_dim * fraction)
        if not 0 < fraction <= 1 or rotary_dim <= 0 or rotary_dim % 2:
            view.unsupported("rope_parameters", (
                f"partial_rotary_factor {fraction!r} rotates int({head_dim} · {fraction!r}) = "
                f"{rotary_dim} dims of each head; txblocks rotates an even, positive number"
            ))  # fmt: skip
            fraction = 1.0
        self._view, self._params, self.fraction = view, params, fraction

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return getattr(self._view, key)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self._params) if key == "rope_parameters" else self._view.get(key, default)

    def unsupported(self, key: str, why: str) -> None:
        self._view.unsupported(key, why)


def partial_rope(c: ConfigView, head_dim: int) -> dict[str, Any]:
    """The ``position`` of a family whose attention rotates ``partial_rotary_factor`` of each
    head: Llama's rope mapping, with that factor as ``fraction``."""
    view = RopeView(c, head_dim)
    return {**rope(view), "fraction": view.fraction}  # type: ignore[arg-type]


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a Phi3Config (without head)."""
    view = RopeView(c, c.get("head_dim") or c.hidden_size // c.num_attention_heads)
    data = _spec(view, qkv_bias=False, out_bias=False, mlp_bias=False,  # type: ignore[arg-type]
                 mask=_window(c.sliding_window), layers=[])  # fmt: skip
    data["position"]["fraction"] = view.fraction
    data["block"]["dropout"] = c.resid_pdrop
    return data


def config(s: Any) -> dict[str, Any]:
    """Phi3Config fields of a spec (checked by converting back)."""
    out = {**_common_config(s), "rope_parameters": partial_rope_parameters(s.position),
           "resid_pdrop": s.block.dropout, "sliding_window": single_window(s)}  # fmt: skip
    del out["head_dim"]
    return {**out, **head_dim_field(s)}  # not a Phi3Config field; Phi-3 reads it only when set


PHI3 = _family(
    "phi3", "Phi3", spec, config, weights=WEIGHTS,
    ignored={
        "embd_pdrop": "Phi3Model never applies it",
        "original_max_position_embeddings": "read by the longrope scaling only, which is refused",
    },
)  # fmt: skip
