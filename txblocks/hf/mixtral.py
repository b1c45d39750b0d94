"""Mixtral (``MixtralModel``, ``MixtralForCausalLM``) <-> Mistral's decoder with an MoE ffn.

The attention, norms, rope and sliding window are Mistral's (:mod:`txblocks.hf.llama`).
Every layer's ``mlp`` is a sparse Mixture of Experts (Jiang et al. 2024): the router
``mlp.gate`` (E, D) gives logits, a float32 softmax over all experts, the top
``num_experts_per_tok`` and their probabilities renormalised to sum to 1: txblocks'
``moe`` with ``normalize_top_k: true`` (:func:`txblocks.nn.moe.route` does the same steps).

transformers 5 stores the experts stacked: ``mlp.experts.gate_up_proj`` (E, 2F, D), gate
rows first, and ``mlp.experts.down_proj`` (E, D, F). Slice ``e`` of each is expert ``e``'s
GLU ``gate_up`` / ``down`` weight (``select`` rules).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, activation, hf_activation
from txblocks.hf.llama import WEIGHTS as LLAMA_WEIGHTS
from txblocks.hf.llama import _common_config, _family, _spec, _window, single_window
from txblocks.hf.rules import Rule

__all__ = ["MIXTRAL"]

#: The router and the stacked experts (one slice per txblocks expert), as Mixtral and
#: Qwen2-MoE store them.
MOE_WEIGHTS = (
    Rule("layers.{i}.mlp.gate.weight", "blocks.{i}.ffn.router.weight"),
    Rule("layers.{i}.mlp.experts.gate_up_proj", "blocks.{i}.ffn.experts.{e}.gate_up.weight",
         "select"),
    Rule("layers.{i}.mlp.experts.down_proj", "blocks.{i}.ffn.experts.{e}.down.weight", "select"),
)  # fmt: skip

WEIGHTS = (*(rule for rule in LLAMA_WEIGHTS if ".mlp." not in str(rule.hf)), *MOE_WEIGHTS)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a MixtralConfig (without head)."""
    if c.router_jitter_noise:
        c.unsupported(
            "router_jitter_noise",
            "HF's Mixtral multiplies the input of the router and of the experts by the noise; "
            "txblocks' moe jitter reaches the router only (Switch). It acts in training only: "
            "set it to 0 to convert",
        )
    data = _spec(c, qkv_bias=False, out_bias=False, mlp_bias=False, mask=_window(c.sliding_window),
                 layers=[])  # fmt: skip
    data["block"]["ffn"] = {
        "type": "moe",
        "experts": c.num_local_experts,
        "top_k": c.num_experts_per_tok,
        "normalize_top_k": True,
        "capacity_factor": None,
        "router_bias": False,
        "jitter": 0.0,
        "aux_loss_coef": c.router_aux_loss_coef,
        "z_loss_coef": 0.0,
        "expert": {"type": "glu", "hidden": c.intermediate_size, "bias": False, "dropout": 0.0,
                   "activation": activation(c, "hidden_act")},
    }  # fmt: skip
    return data


def config(s: Any) -> dict[str, Any]:
    """MixtralConfig fields of a spec (checked by converting back)."""
    moe = s.block.ffn
    expert = getattr(moe, "expert", None)
    return {
        **_common_config(s),
        "intermediate_size": getattr(expert, "hidden", None),
        "hidden_act": hf_activation(getattr(expert, "activation", None)),
        "num_local_experts": getattr(moe, "experts", None),
        "num_experts_per_tok": getattr(moe, "top_k", None),
        "router_aux_loss_coef": getattr(moe, "aux_loss_coef", 0.0),
        "sliding_window": single_window(s),
    }


MIXTRAL = _family(
    "mixtral", "Mixtral", spec, config, weights=WEIGHTS,
    ignored={"output_router_logits": "only adds the router logits and aux loss to the outputs"},
)  # fmt: skip
