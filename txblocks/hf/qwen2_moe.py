"""Qwen2-MoE (``Qwen2MoeModel``, ``Qwen2MoeForCausalLM``) <-> Qwen2's decoder with an MoE
ffn that has a gated shared expert.

The attention, norms, rope and sliding-window layers are Qwen2's (:mod:`txblocks.hf.llama`;
q, k, v biased when ``qkv_bias``). Layer ``i``'s ``mlp`` is sparse when ``num_experts > 0``,
``(i + 1) % decoder_sparse_step == 0`` and ``i`` is not in ``mlp_only_layers``; the other
layers keep a SwiGLU of ``intermediate_size`` (a ``layers:`` override). A sparse ``mlp``
(Qwen team 2024) is txblocks' ``moe``: the router ``mlp.gate`` (E, D), a float32 softmax,
the top ``num_experts_per_tok`` (renormalised when ``norm_topk_prob``), GLU experts of
``moe_intermediate_size`` stacked as Mixtral's (``select`` rules), plus one shared SwiGLU
expert of ``shared_expert_intermediate_size`` scaled by ``sigmoid(shared_expert_gate(x))``
(``shared_experts: 1, shared_hidden, shared_gate: true``).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import qkv_bias
from txblocks.hf.family import ConfigView, activation, ffn_hidden, hf_activation
from txblocks.hf.llama import WEIGHTS as LLAMA_WEIGHTS
from txblocks.hf.llama import _family, qwen2_config, qwen2_spec
from txblocks.hf.mixtral import MOE_WEIGHTS
from txblocks.hf.rules import Rule

__all__ = ["QWEN2_MOE"]

WEIGHTS = (
    *LLAMA_WEIGHTS,  # attention, norms, and the dense layers' mlp
    *MOE_WEIGHTS,
    Rule(("layers.{i}.mlp.shared_expert.gate_proj.weight",
          "layers.{i}.mlp.shared_expert.up_proj.weight"), "blocks.{i}.ffn.shared.gate_up.weight",
         "concat"),
    Rule("layers.{i}.mlp.shared_expert.down_proj.weight", "blocks.{i}.ffn.shared.down.weight"),
    Rule("layers.{i}.mlp.shared_expert_gate.weight", "blocks.{i}.ffn.shared_gate.weight"),
)  # fmt: skip


def sparse_layers(n_layers: int, experts: int, step: int, mlp_only: list[int]) -> list[int]:
    """The layers HF gives a sparse ``mlp``."""
    if experts <= 0 or step <= 0:
        return []
    return [i for i in range(n_layers) if i not in mlp_only and (i + 1) % step == 0]


def _glu(c: ConfigView, hidden: int) -> dict[str, Any]:
    return {"type": "glu", "hidden": hidden, "bias": False, "dropout": 0.0,
            "activation": activation(c, "hidden_act")}  # fmt: skip


def _moe(c: ConfigView) -> dict[str, Any]:
    shared = c.shared_expert_intermediate_size
    if shared < 1:
        c.unsupported("shared_expert_intermediate_size", "need 1 or more (HF always builds the "
                      "shared expert and its gate)")  # fmt: skip
    return {
        "type": "moe", "experts": c.num_experts, "top_k": c.num_experts_per_tok,
        "normalize_top_k": bool(c.norm_topk_prob), "capacity_factor": None, "capacity": None,
        "router_bias": False, "jitter": 0.0, "aux_loss_coef": c.router_aux_loss_coef,
        "z_loss_coef": 0.0, "shared_experts": 1, "shared_hidden": max(shared, 1),
        "shared_gate": True, "expert": _glu(c, c.moe_intermediate_size),
    }  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a Qwen2MoeConfig (without head)."""
    if any(t == "sliding_attention" for t in (c.layer_types or [])) and not c.sliding_window:
        # transformers turns sliding_window into 0 unless use_sliding_window
        c.unsupported("layer_types", "names sliding_attention layers but sliding_window is "
                      f"{c.sliding_window!r} (use_sliding_window: {c.use_sliding_window})")  # fmt: skip
    data = qwen2_spec(c)
    data["block"]["attention"]["qkv_bias"] = bool(c.qkv_bias)
    n = c.num_hidden_layers
    sparse = sparse_layers(n, c.num_experts, c.decoder_sparse_step, list(c.mlp_only_layers or []))
    dense = [i for i in range(n) if i not in sparse]
    if sparse:
        data["block"]["ffn"] = _moe(c)
        if dense:
            data["layers"].append({"select": dense, "ffn": _glu(c, c.intermediate_size)})
    else:
        data["block"]["ffn"] = _glu(c, c.intermediate_size)
    return data


def _sparse_config(sparse: list[int], n: int) -> dict[str, Any]:
    """``decoder_sparse_step`` (and ``mlp_only_layers``) that give the sparse layers."""
    for step in range(1, n + 1):
        if sparse_layers(n, 1, step, []) == sparse:
            return {"decoder_sparse_step": step, "mlp_only_layers": []}
    return {"decoder_sparse_step": 1, "mlp_only_layers": [i for i in range(n) if i not in sparse]}


def config(s: Any) -> dict[str, Any]:
    """Qwen2MoeConfig fields of a spec (checked by converting back)."""
    n = s.n_layers
    ffns = [s.block_for(i).ffn for i in range(n)]
    sparse = [i for i, f in enumerate(ffns) if f.type == "moe"]
    moe = ffns[sparse[0]] if sparse else None
    dense = next((f for f in ffns if f.type != "moe"), None)
    out = {k: v for k, v in qwen2_config(s).items() if k not in ("intermediate_size", "hidden_act")}
    out["qkv_bias"] = qkv_bias(s)
    if dense is not None:
        out["intermediate_size"] = ffn_hidden(dense, s.d_model)
        out["hidden_act"] = hf_activation(getattr(dense, "activation", None))
    if moe is None:
        return {**out, "num_experts": 0}
    expert = moe.expert
    shared = moe.shared_config()
    out.update({
        "hidden_act": hf_activation(getattr(expert, "activation", None)),
        "num_experts": moe.experts, "num_experts_per_tok": moe.top_k,
        "norm_topk_prob": moe.normalize_top_k, "router_aux_loss_coef": moe.aux_loss_coef,
        "moe_intermediate_size": getattr(expert, "hidden", None),
        "shared_expert_intermediate_size": getattr(shared, "hidden", None),
        **_sparse_config(sparse, n),
    })  # fmt: skip
    return out


QWEN2_MOE = _family(
    "qwen2_moe", "Qwen2Moe", spec, config, weights=WEIGHTS,
    ignored={"output_router_logits": "only adds the router logits and aux loss to the outputs"},
)  # fmt: skip

