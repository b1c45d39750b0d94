"""Switch Transformers (``SwitchTransformersModel``, ``...ForConditionalGeneration``,
``...EncoderModel``) <-> T5's encoder–decoder with top-1 Mixture-of-Experts layers.

Switch (Fedus et al. 2022) is T5's network (:mod:`txblocks.hf.t5`: relative buckets per
stack, unscaled scores, RMSNorm, no biases) whose sparse layers replace the ReLU MLP
(``mlp.wi`` / ``mlp.wo``) by ``num_experts`` of them behind a top-1 router
(``mlp.router.classifier``, ``mlp.experts.expert_{e}``). HF makes layer ``i`` of a stack
sparse when ``i % sparse_step == 1`` (or ``sparse_step == 1``), ``sparse_step =
num_layers // num_sparse_*_layers``: a ``layers:`` override per stack listing those layers.

The router is txblocks' ``moe`` with ``top_k: 1``, ``normalize_top_k: false`` (the weight
is the softmax probability), and HF's capacity: ``expert_capacity`` tokens per expert,
counted per sequence (``capacity: expert_capacity, capacity_per: sequence``), first come
first served, a dropped token getting 0 from the layer. ``router_jitter_noise`` is
``jitter`` (training only; HF multiplies the router input in place, so in a float32 model
its experts see the noisy input too, while txblocks' experts see the clean one).

``tie_word_embeddings`` ties the encoder's and decoder's tables to ``shared``
(``shared_embeddings``; untied, ``shared`` is not used by the forward and ``to_hf`` writes
the encoder's table to it) and the LM head, which then scales the decoder output by
``d_model ** -0.5`` (:func:`txblocks.hf.t5.lm_head`).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, HFFamily, HFHead, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule
from txblocks.hf.t5 import _attention, body, lm_head

__all__ = ["SWITCH", "SWITCH_ENCODER"]


def _ffn(hf: str, tx: str) -> tuple[Rule, ...]:
    mlp = f"{hf}.mlp"
    return (
        Rule(f"{mlp}.wi.weight", f"{tx}.ffn.up.weight"),
        Rule(f"{mlp}.wo.weight", f"{tx}.ffn.down.weight"),
        Rule(f"{mlp}.router.classifier.{{p}}", f"{tx}.ffn.router.{{p}}"),
        Rule(f"{mlp}.experts.expert_{{e}}.wi.weight", f"{tx}.ffn.experts.{{e}}.up.weight"),
        Rule(f"{mlp}.experts.expert_{{e}}.wo.weight", f"{tx}.ffn.experts.{{e}}.down.weight"),
        Rule(f"{hf}.layer_norm.weight", f"{tx}.norm2.weight"),
    )


def _stack(stack: str, tx: str) -> tuple[Rule, ...]:
    hf, out = f"{stack}.block.{{i}}.layer", f"{tx}blocks.{{i}}"
    bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    rules = [
        Rule(bias, f"{tx}position.relative_attention_bias.weight"),
        *_attention(f"{hf}.0.SelfAttention", out),
        Rule(f"{hf}.0.layer_norm.weight", f"{out}.norm1.weight"),
        Rule(f"{stack}.final_layer_norm.weight", f"{tx}final_norm.weight"),
    ]
    if stack == "encoder":
        return (*rules, *_ffn(f"{hf}.1", out))
    cross = tuple(
        Rule(f"{hf}.1.EncDecAttention.{a}.weight", f"{out}.cross_attention.{b}.weight")
        for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "out"))
    )
    return (*rules, *cross, Rule(f"{hf}.1.layer_norm.weight", f"{out}.norm_cross.weight"),
            *_ffn(f"{hf}.2", out))  # fmt: skip


WEIGHTS = (
    # tied: one tensor under all three names; untied: `shared` is unused by the forward
    Rule(("encoder.embed_tokens.weight", "shared.weight"), "encoder.embeddings.tokens.weight",
         "alias"),
    Rule("decoder.embed_tokens.weight", "decoder.embeddings.tokens.weight"),
    *_stack("encoder", "encoder."),
    *_stack("decoder", "decoder."),
)
ENCODER_WEIGHTS = (
    Rule(("encoder.embed_tokens.weight", "shared.weight"), "embeddings.tokens.weight", "alias"),
    *_stack("encoder", ""),
)


def sparse_layers(n_layers: int, step: int) -> list[int]:
    """The layers HF makes sparse in a stack of ``n_layers`` with ``sparse_step`` ``step``."""
    return [i for i in range(n_layers) if step > 0 and (i % step == 1 or step == 1)]


def _mlp(c: ConfigView) -> dict[str, Any]:
    return {"type": "mlp", "hidden": c.d_ff, "bias": False, "dropout": c.dropout_rate,
            "activation": activation(c, "dense_act_fn")}  # fmt: skip


def _moe(c: ConfigView) -> dict[str, Any]:
    if c.router_dtype != "float32":
        c.unsupported("router_dtype", "txblocks' router runs its softmax in float32 and its "
                      "linear layer in the model's dtype; only float32 routers are mapped")  # fmt: skip
    jitter = c.router_jitter_noise
    if not 0 <= jitter < 1:
        c.unsupported("router_jitter_noise", "txblocks' jitter is in [0, 1)")
        jitter = 0.0
    return {
        "type": "moe", "experts": c.num_experts, "top_k": 1, "normalize_top_k": False,
        "capacity_factor": None, "capacity": c.expert_capacity, "capacity_per": "sequence",
        "router_bias": bool(c.router_bias), "jitter": jitter,
        "aux_loss_coef": c.router_aux_loss_coef, "z_loss_coef": c.router_z_loss_coef,
        "shared_experts": 0, "expert": _mlp(c),
    }  # fmt: skip


def _layers(c: ConfigView, stacks: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """One override per stack whose layers HF makes sparse."""
    out = []
    for stack, (n_layers, step) in stacks.items():
        sparse = sparse_layers(n_layers, step)
        if sparse:
            out.append({"stack": stack, "select": sparse, "ffn": _moe(c)})
    return out


def _body(c: ConfigView) -> dict[str, Any]:
    c.get("num_sparse_encoder_layers")  # HF derives encoder_sparse_step from it
    return body(c, _mlp(c))


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a SwitchTransformersConfig (without head)."""
    c.get("num_sparse_decoder_layers")
    stacks = {"encoder": (c.num_layers, c.encoder_sparse_step),
              "decoder": (c.num_decoder_layers, c.decoder_sparse_step)}  # fmt: skip
    return {"arch": "seq2seq", **_body(c), "decoder_layers": c.num_decoder_layers,
            "shared_embeddings": bool(c.tie_word_embeddings),
            "layers": _layers(c, stacks)}  # fmt: skip


def encoder_spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a SwitchTransformersConfig for ``SwitchTransformersEncoderModel``."""
    for key in ("num_decoder_layers", "num_sparse_decoder_layers", "decoder_sparse_step"):
        c.get(key)  # no decoder
    return {"arch": "encoder", **_body(c),
            "layers": _layers(c, {"encoder": (c.num_layers, c.encoder_sparse_step)})}  # fmt: skip


def _n_sparse(s: Any, stack: str) -> int | None:
    """The ``num_sparse_*_layers`` that gives the spec's sparse layers, or None."""
    n_layers = s.stacks[stack]
    sparse = [i for i in range(n_layers) if s.block_for(i, stack).ffn.type == "moe"]
    for n in range(n_layers + 1):
        if sparse_layers(n_layers, n_layers // n if n else n_layers) == sparse:
            return n
    return None


def _common_config(s: Any, stack: str) -> dict[str, Any]:
    block = s.block
    n_layers = s.stacks[stack]
    sparse = next((s.block_for(i, stack).ffn for i in range(n_layers)
                   if s.block_for(i, stack).ffn.type == "moe"), None)  # fmt: skip
    position = s.position
    out = {
        "vocab_size": s.vocab_size,
        "n_positions": s.max_seq_len,
        "d_model": s.d_model,
        "d_kv": s.head_size,
        "d_ff": ffn_hidden(block.ffn, s.d_model),
        "num_layers": s.n_layers,
        "num_heads": s.n_heads,
        "num_sparse_encoder_layers": _n_sparse(s, "encoder"),
        "relative_attention_num_buckets": getattr(position, "num_buckets", 32),
        "relative_attention_max_distance": getattr(position, "max_distance", 128),
        "dropout_rate": block.dropout,
        "layer_norm_epsilon": getattr(block.norm, "eps", 1e-6),
        "dense_act_fn": hf_activation(getattr(block.ffn, "activation", None), "gelu_new"),
        "initializer_factor": round(s.init_std * s.d_model**0.5, 12),
    }
    if sparse is not None:
        out.update({
            "num_experts": sparse.experts, "expert_capacity": sparse.capacity,
            "router_bias": sparse.router_bias, "router_jitter_noise": sparse.jitter,
            "router_aux_loss_coef": sparse.aux_loss_coef,
            "router_z_loss_coef": sparse.z_loss_coef,
        })  # fmt: skip
    return out


def config(s: Any) -> dict[str, Any]:
    """SwitchTransformersConfig fields of a seq2seq spec (checked by converting back)."""
    return {**_common_config(s, "encoder"), "num_decoder_layers": s.stacks["decoder"],
            "num_sparse_decoder_layers": _n_sparse(s, "decoder"),
            "tie_word_embeddings": s.shared_embeddings}  # fmt: skip


_IGNORED = {
    "is_decoder": "Switch's classes set it per stack",
    "is_encoder_decoder": "Switch's classes set it",
    "add_router_probs": "an output switch",
    "router_ignore_padding_tokens": "not read by transformers 5's Switch forward",
    "add_cross_attention": "Switch's classes set it per stack",
}

SWITCH = HFFamily(
    name="switch_transformers",
    arch="seq2seq",
    model_type="switch_transformers",
    config_class="SwitchTransformersConfig",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("SwitchTransformersModel", None),
        lm_head("SwitchTransformersForConditionalGeneration", model_type="switch_transformers",
                scaled=lambda c: bool(c.tie_word_embeddings),
                scaled_config=lambda scaled: {"tie_word_embeddings": scaled}),
    ),
    ignored=_IGNORED,
)  # fmt: skip

SWITCH_ENCODER = HFFamily(
    name="switch_transformers_encoder",
    arch="encoder",
    model_type="switch_transformers",
    config_class="SwitchTransformersConfig",
    spec=encoder_spec,
    config=lambda s: _common_config(s, "encoder"),
    weights=ENCODER_WEIGHTS,
    heads=(HFHead("SwitchTransformersEncoderModel", None),),
    ignored=_IGNORED,
)
