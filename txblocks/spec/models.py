"""The spec's pydantic models (static part; slots are filled from a registry).

Fields annotated ``Slot["kind"]`` accept any component of that kind registered in
the registry the spec is validated against (see :mod:`txblocks.spec.schema`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, create_model

from txblocks.errors import did_you_mean
from txblocks.spec.slots import Slot

__all__ = [
    "AttentionSpec",
    "BlockSpec",
    "DecoderSpec",
    "EmbeddingSpec",
    "EncoderSpec",
    "LayerOverride",
    "ModelSpec",
    "Seq2SeqSpec",
    "ShareLayers",
    "TextSpec",
    "VitSpec",
]

# Strict: `d_model: true` or `"32"` is a mistake to report, not a 1 or a 32 to guess.
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
Layout = Literal["pre_norm", "post_norm", "parallel", "reordered_norm"]


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors."""

    # `.inf` / `.nan` are never a sensible size, scale or rate: reject them like any bad value.
    model_config = ConfigDict(
        extra="forbid", validate_default=True, validate_assignment=True, allow_inf_nan=False
    )


class EmbeddingSpec(SpecModel):
    """Token embeddings and what is applied to them before the first block."""

    scale: float | Literal["sqrt_d_model"] | None = Field(
        None, description="Multiply token embeddings by this (T5/BART/Gemma style)."
    )
    token_types: int = Field(0, ge=0, description="Segment vocabulary (BERT: 2); 0 = none.")
    norm: Slot["norm"] | None = Field(None, description="Norm after embedding (BERT, BART).")
    dropout: Probability = Field(0.0, description="Dropout on the summed embeddings.")
    width: PositiveInt | None = Field(
        None,
        description="Width of the token table when it is not d_model, with a linear projection "
        "to d_model (ALBERT, ELECTRA-small, OPT-350m); null: d_model wide, no projection.",
    )
    project_at: Literal["end", "tokens"] = Field(
        "end",
        description="With width: where the projection to d_model is. end: last, so segments, "
        "positions added to the embeddings and the norm are width wide (ALBERT, ELECTRA); "
        "tokens: right after the token table (and scale), the rest d_model wide (OPT-350m).",
    )
    project_bias: bool = Field(
        True, description="With width: a bias on the projections (ALBERT, ELECTRA; not OPT-350m)."
    )
    project_out: bool = Field(
        False,
        description="With width: project the last hidden states (after the final norm) back to "
        "width, as OPT-350m's project_out; the output and the head are then width wide.",
    )


class AttentionSpec(SpecModel):
    """Self-attention: kernel, mask and projections."""

    kernel: Slot["attention"] = Field("auto", description="Attention kernel; auto picks the fastest valid one.")
    mask: Slot["mask"] | None = Field(
        None, description="Mask strategy; defaults to causal for decoders, none for encoders."
    )
    bias: bool = Field(True, description="Bias on the q/k/v and output projections.")
    qkv_bias: bool | None = Field(None, description="Override `bias` for q/k/v only.")
    out_bias: bool | None = Field(None, description="Override `bias` for the output projection.")
    k_bias: bool | None = Field(
        None,
        description="Override the q/k/v bias for the key projection only (Whisper: false); "
        "needs fused_qkv: false unless it equals the q/k/v bias.",
    )
    fused_qkv: bool = Field(True, description="One matrix for q, k and v.")
    qk_norm: Slot["norm"] | None = Field(None, description="Norm applied per head to q and k.")
    qk_norm_over: Literal["heads", "width"] = Field(
        "heads",
        description="What qk_norm normalizes: heads, each head of q and k over head_dim (Qwen3, "
        "OLMo); width, all of q over n_heads·head_dim and all of k over n_kv_heads·head_dim, "
        "before the split into heads (OLMo 2).",
    )
    softcap: float | None = Field(None, gt=0, description="Logit soft-capping c·tanh(s/c) (Gemma 2).")
    scale: float | None = Field(None, gt=0, description="Score scale; default head_dim ** -0.5.")
    dropout: Probability = Field(0.0, description="Dropout on attention probabilities.")


class BlockSpec(SpecModel):
    """One Transformer block: attention, ffn, norms and their arrangement."""

    layout: Layout = Field(
        "pre_norm",
        description="pre_norm x + f(norm(x)) (GPT-2, Llama), post_norm norm(x + f(x)) (original "
        "Transformer, BERT), parallel x + attn(norm1(x)) + ffn(norm2(x)) (GPT-J, GPT-NeoX), "
        "reordered_norm x + norm(f(x)) (OLMo 2).",
    )
    norm: Slot["norm"] = Field("layernorm", description="The block's norms.")
    attention: AttentionSpec = Field(default_factory=AttentionSpec)
    ffn: Slot["ffn"] = Field("mlp", description="Feed-forward network (dense or MoE).")
    dropout: Probability = Field(0.0, description="Dropout on each residual branch.")
    shared_norm: bool = Field(
        False,
        description="parallel layout only: one norm feeds attention and ffn, "
        "x + attn(norm(x)) + ffn(norm(x)) (GPT-J, Phi, Falcon-7B).",
    )
    post_attention_norm: bool = Field(
        False,
        description="A norm (block.norm) on the attention output before the residual add: "
        "Gemma 2's sandwich norms, with post_ffn_norm.",
    )
    post_ffn_norm: bool = Field(
        False, description="A norm (block.norm) on the ffn output before the residual add (Gemma 2)."
    )
    layer_scale: float | None = Field(
        None,
        gt=0,
        description="LayerScale (Touvron et al. 2021): the attention and ffn outputs times a "
        "learned per-channel vector initialised to this (BEiT: 0.1); null: none.",
    )


def _partial(model: type[SpecModel], name: str) -> type[SpecModel]:
    """``model`` with every field optional (None = keep the base block's value)."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        annotation = info.annotation
        if info.metadata:  # FieldInfo splits slot markers and bounds off; put them back
            annotation = Annotated[(annotation, *info.metadata)]
        fields[key] = (annotation | None, Field(None, description=info.description))
    return create_model(name, __base__=SpecModel, __module__=__name__, **fields)  # type: ignore[call-overload]


AttentionOverride = _partial(AttentionSpec, "AttentionOverride")
AttentionOverride.__doc__ = "Attention fields to change on the selected layers."

SELECT_WORDS = ("all", "odd", "even")


class LayerRange(SpecModel):
    """Layers ``start, start + step, …`` below ``stop`` (every n-th layer: ``step: n``)."""

    start: int = Field(0, ge=0)
    stop: int | None = Field(None, ge=0)
    step: int = Field(1, ge=1)


def _parse_select(value: Any) -> Any:
    if isinstance(value, str):
        if value not in SELECT_WORDS:
            raise ValueError(
                f"got {value!r}; allowed: {', '.join(SELECT_WORDS)}, an index, a list of "
                f"indices or {{start, stop, step}}{did_you_mean(value, SELECT_WORDS)}"
            )
        return value
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}; expected a layer index, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"got {value!r}; expected a non-empty list of layer indices")
        return value
    if isinstance(value, dict):
        allowed = sorted(LayerRange.model_fields)
        for key in value:
            if key not in allowed:
                raise ValueError(
                    f"unknown field {key!r} in a layer range; allowed fields: "
                    f"{', '.join(allowed)}{did_you_mean(key, allowed)}"
                )
        try:
            return LayerRange.model_validate(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {first['msg']}; got {first.get('input')!r}") from None
    raise ValueError(
        f"got {value!r}; expected 'all', 'odd', 'even', an index, a list of indices "
        "or {start, stop, step}"
    )


Select = Annotated[
    Any,
    PlainValidator(
        _parse_select,
        json_schema_input_type=Literal["all", "odd", "even"] | int | list[int] | LayerRange,
    ),
]


class LayerOverride(SpecModel):
    """Changes applied to selected layers, in order (hybrid stacks, interleaved MoE)."""

    stack: Literal["encoder", "decoder", "both"] = Field(
        "both", description="seq2seq: which stack's layers `select` counts (default both)."
    )
    select: Select = Field(
        ..., description="'all', 'odd', 'even', an index, a list of indices, or {start, stop, step}."
    )
    layout: Layout | None = None
    norm: Slot["norm"] | None = None
    attention: AttentionOverride | None = None  # type: ignore[valid-type]
    ffn: Slot["ffn"] | None = None
    dropout: Probability | None = None
    shared_norm: bool | None = None
    post_attention_norm: bool | None = None
    post_ffn_norm: bool | None = None
    layer_scale: float | None = Field(None, gt=0)

    def out_of_range(self, n_layers: int) -> str | None:
        """Why the selection does not fit ``n_layers`` layers, or None when it does."""
        sel, n = self.select, n_layers
        if isinstance(sel, LayerRange):
            if sel.start >= n or (sel.stop is not None and sel.stop > n):
                return f"range {sel.start}:{sel.stop} is outside 0..{n} (n_layers {n})"
            if sel.stop is not None and sel.stop <= sel.start:
                return f"range {sel.start}:{sel.stop} selects no layer"
            return None
        for i in [sel] if isinstance(sel, int) else sel if isinstance(sel, list) else []:
            if not -n <= i < n:
                return f"layer index {i} is out of range for n_layers {n} (allowed -{n}..{n - 1})"
        return None

    def selects(self, index: int, n_layers: int) -> bool:
        """Whether layer ``index`` (0-based) is selected in a stack of ``n_layers``."""
        sel = self.select
        if sel == "all":
            return True
        if sel == "odd":
            return index % 2 == 1
        if sel == "even":
            return index % 2 == 0
        if isinstance(sel, int):
            return index == sel % n_layers
        if isinstance(sel, list):
            return any(index == i % n_layers for i in sel)
        stop = n_layers if sel.stop is None else sel.stop
        return sel.start <= index < stop and (index - sel.start) % sel.step == 0


Stack = Literal["encoder", "decoder"]

#: The block fields a layer override may set besides ``attention``.
OVERRIDDEN = ("layout", "norm", "ffn", "dropout", "shared_norm", "post_attention_norm",
              "post_ffn_norm", "layer_scale")


class ShareLayers(SpecModel):
    """Layers that share their parameters (ALBERT, Lan et al. 2020, §3.1).

    Each stack is cut into ``groups`` runs of ``n_layers / groups`` consecutive layers; the
    layers of a run are one block, applied again and again (each keeps its own mask and
    cache entry). ``groups: 1``: one block for the whole stack.
    """

    groups: PositiveInt = Field(
        1, description="Runs of consecutive layers sharing one block; must divide n_layers."
    )

    def first_of(self, index: int, n_layers: int) -> int:
        """The layer whose block layer ``index`` reuses (itself when it starts a run)."""
        size = n_layers // self.groups
        return index - index % size


class ModelSpec(SpecModel):
    """Fields shared by every architecture."""

    arch: str
    name: str = Field("model", description="A label for the model.")
    extends: str | None = Field(
        None, description="A shipped preset name, or a spec file relative to this one, to start from."
    )
    max_seq_len: PositiveInt = Field(2048, description="Longest sequence the model is built for.")
    d_model: PositiveInt
    n_layers: PositiveInt = Field(..., description="Blocks (in the encoder, for seq2seq).")
    n_heads: PositiveInt
    n_kv_heads: PositiveInt | None = Field(None, description="Key/value heads (GQA); default n_heads.")
    head_dim: PositiveInt | None = Field(None, description="Default d_model // n_heads.")
    position: Slot["position"] = Field("learned", description="Positional scheme.")
    front_end: Slot["front_end"] | None = Field(
        None,
        description="What turns the raw inputs into the first hidden states (the encoder's, "
        "for seq2seq): tokens (token ids through `embedding`), patches (pixels, vit; with an "
        "optional norm after it, CLIP); null: the architecture's own, tokens or patches.",
    )
    block: BlockSpec = Field(default_factory=BlockSpec)
    layers: list[LayerOverride] = Field(
        default_factory=list, description="Per-layer overrides, applied in order."
    )
    share_layers: ShareLayers | None = Field(
        None,
        description="Share parameters across layers: {groups: 1} runs one block n_layers times "
        "(ALBERT); null: every layer its own.",
    )
    final_norm: bool | None = Field(
        None, description="Norm after the last block; default on unless layout is post_norm."
    )
    head: Any = None
    init_std: float = Field(0.02, gt=0, description="Std of the normal weight initialisation.")
    adapters: list[Slot["adapter"]] = Field(
        default_factory=list,
        description="Adapters applied after build by plugins (e.g. {type: lora, rank: 8}).",
    )
    quantization: Slot["quantization"] | None = Field(
        None,
        description="Quantize every linear layer for inference after build, or after load puts "
        "the float weights in (int8_weight_only, int8_dynamic; needs torchao).",
    )

    #: The self-attention mask of each stack when the spec names none.
    default_masks: ClassVar[dict[str, str]] = {"encoder": "none"}

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def vocab(self) -> int:
        """Tokens in the vocabulary (0 for models that read pixels)."""
        return 0

    @property
    def stacks(self) -> dict[Stack, int]:
        """Layers per stack, e.g. ``{"decoder": 12}``."""
        return {next(iter(self.default_masks)): self.n_layers}  # type: ignore[dict-item]

    def block_for(self, index: int, stack: Stack | None = None) -> BlockSpec:
        """The block of layer ``index`` of ``stack`` with every override applied, mask defaulted."""
        stack = stack or next(iter(self.stacks))
        n_layers = self.stacks[stack]
        block = self.block
        if stack == "decoder" and "encoder" in self.stacks:  # seq2seq: block.attention.mask is the encoder's
            block = block.model_copy(update={"attention": block.attention.model_copy(update={"mask": None})})
        for override in self.layers:
            if override.stack not in (stack, "both") or not override.selects(index, n_layers):
                continue
            changes = {
                k: getattr(override, k)
                for k in OVERRIDDEN
                if getattr(override, k) is not None
            }
            if override.attention is not None:
                att = {k: v for k, v in override.attention if v is not None}
                changes["attention"] = block.attention.model_copy(update=att)
            block = block.model_copy(update=changes)
        if block.attention.mask is None:
            # Validated through the (registry-specialized) attention model, like a spec value.
            default = self.default_masks[stack]
            mask = type(block.attention).model_validate({"mask": default}).mask
            attention = block.attention.model_copy(update={"mask": mask})
            block = block.model_copy(update={"attention": attention})
        return block

    @property
    def use_final_norm(self) -> bool:
        if self.final_norm is not None:
            return self.final_norm
        return self.block.layout != "post_norm"

    def to_yaml(self) -> str:
        """This spec as YAML; ``load_spec(spec.to_yaml())`` gives an equal spec."""
        from txblocks.spec.io import dump_yaml

        return dump_yaml(self)


class TextSpec(ModelSpec):
    """Fields of the models that read tokens."""

    vocab_size: PositiveInt
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)

    @property
    def vocab(self) -> int:
        return self.vocab_size


class DecoderSpec(TextSpec):
    """A decoder-only language model (GPT-2, Llama, Mistral)."""

    arch: Literal["decoder"]
    head: Slot["head"] | None = Field("lm", description="Output head; null for hidden states only.")
    default_masks: ClassVar[dict[str, str]] = {"decoder": "causal"}


class EncoderSpec(TextSpec):
    """A bidirectional encoder (BERT, RoBERTa)."""

    arch: Literal["encoder"]
    head: Slot["head"] | None = Field(None, description="Output head; null for hidden states only.")


class Seq2SeqSpec(TextSpec):
    """An encoder–decoder (T5, BART, the original Transformer).

    ``block`` describes both stacks; its attention mask is the encoder's (default none),
    the decoder's self-attention is causal. Overrides pick a stack with ``stack:``.
    """

    arch: Literal["seq2seq"]
    decoder_layers: PositiveInt | None = Field(None, description="Decoder blocks; default n_layers.")
    decoder_max_seq_len: PositiveInt | None = Field(
        None,
        description="Longest target sequence (the decoder's positions) when it differs from "
        "max_seq_len, which is then the encoder's (Whisper: 1500 and 448); default max_seq_len.",
    )
    cross_attention: AttentionOverride | None = Field(  # type: ignore[valid-type]
        None, description="Cross-attention fields that differ from block.attention (mask is ignored)."
    )
    shared_embeddings: bool = Field(True, description="Encoder and decoder share the token table.")
    head: Slot["head"] | None = Field("lm", description="Output head over the decoder.")
    default_masks: ClassVar[dict[str, str]] = {"encoder": "none", "decoder": "causal"}

    @property
    def stacks(self) -> dict[Stack, int]:
        return {"encoder": self.n_layers, "decoder": self.decoder_layers or self.n_layers}

    def max_seq_len_of(self, stack: Stack) -> int:
        """The longest sequence of ``stack``."""
        if stack == "decoder" and self.decoder_max_seq_len is not None:
            return self.decoder_max_seq_len
        return self.max_seq_len

    def cross_attention_for(self, index: int) -> AttentionSpec:
        """Decoder layer ``index``'s cross-attention: its self-attention plus ``cross_attention``."""
        attention = self.block_for(index, "decoder").attention
        changes = {k: v for k, v in (self.cross_attention or {}) if v is not None}
        changes["mask"] = type(attention).model_validate({"mask": "none"}).mask
        return attention.model_copy(update=changes)


Pair = Annotated[tuple[PositiveInt, PositiveInt], Field(description="(height, width)")]


class VitSpec(ModelSpec):
    """A Vision Transformer (Dosovitskiy et al. 2021): an encoder over image patches."""

    arch: Literal["vit"]
    image_size: PositiveInt | Pair = Field(224, description="Pixels; an int or [height, width].")
    patch_size: PositiveInt | Pair = Field(16, description="Pixels per patch; an int or [height, width].")
    channels: PositiveInt = 3
    class_token: bool = Field(True, description="Prepend a learned [CLS] token.")
    register_tokens: int = Field(0, ge=0, description="Learned register tokens (Darcet et al. 2024).")
    patch_position: Literal["learned", "sincos2d", "none"] = Field(
        "learned", description="Absolute positions of patches: learned, or fixed 2-D sin-cos."
    )
    position: Slot["position"] = Field("none", description="A positional scheme inside attention.")
    embedding_dropout: Probability = 0.0
    head: Slot["head"] | None = Field(None, description="e.g. {type: classifier, n_classes: 1000}.")

    @property
    def image_hw(self) -> tuple[int, int]:
        return _pair(self.image_size)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return _pair(self.patch_size)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])
