"""The one place where a spec becomes modules."""

from __future__ import annotations

import dataclasses

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from txblocks.errors import BuildError
from txblocks.nn.attention import Attention
from txblocks.nn.block import TransformerBlock
from txblocks.nn.dims import ModelDims
from txblocks.nn.embeddings import Embeddings
from txblocks.nn.front_end import FrontEndInputs
from txblocks.nn.layer_scale import LayerScale
from txblocks.nn.model import Seq2SeqModel, TransformerModel, TransformerStack
from txblocks.nn.vit import PatchEmbedding, VisionTransformer
from txblocks.nn.width_norm import WidthNorm
from txblocks.quantize import apply_quantization
from txblocks.registry import Registry
from txblocks.spec.checks import dims_of
from txblocks.spec.io import load_spec
from txblocks.spec.limits import human_bytes
from txblocks.spec.models import (
    AttentionSpec, BlockSpec, ModelSpec, Seq2SeqSpec, Stack, TextSpec, VitSpec,
)  # fmt: skip

__all__ = ["ModelSize", "build", "build_on_meta", "device_memory", "init_weights", "measure",
           "model_size"]

Model = TransformerModel | Seq2SeqModel | VisionTransformer


def _attention(spec: AttentionSpec, dims: ModelDims, device: torch.device, where: str,
               *, cross: bool = False) -> Attention:
    kernel = spec.kernel.build()
    reasons = [] if device.type == "meta" else kernel.why_not_on(device)  # meta: measuring only
    if reasons:
        raise BuildError(
            f"{where}.kernel: {spec.kernel.type!r} cannot run on {device}: {'; '.join(reasons)}"
        )
    if spec.softcap is not None:
        _check_softcap(kernel, spec, dims, where)
    qkv_bias = spec.bias if spec.qkv_bias is None else spec.qkv_bias
    fused = spec.fused_qkv and not cross
    if spec.k_bias is not None and spec.k_bias != qkv_bias and fused:
        raise BuildError(f"{where}.k_bias: a key bias unlike the query and value biases needs "
                         "fused_qkv: false")
    q_norm = k_norm = None
    if spec.qk_norm is not None and spec.qk_norm_over == "width":  # OLMo 2: all heads at once
        q_norm = WidthNorm(spec.qk_norm.build(dims.n_heads * dims.head_dim))
        k_norm = WidthNorm(spec.qk_norm.build(dims.n_kv_heads * dims.head_dim))
    elif spec.qk_norm is not None:
        q_norm, k_norm = spec.qk_norm.build(dims.head_dim), spec.qk_norm.build(dims.head_dim)
    return Attention(
        dims.d_model, dims.n_heads, dims.n_kv_heads, dims.head_dim, kernel,
        qkv_bias=qkv_bias,
        out_bias=spec.bias if spec.out_bias is None else spec.out_bias,
        fused_qkv=fused, k_bias=spec.k_bias,
        q_norm=q_norm, k_norm=k_norm,
        softcap=spec.softcap, scale=spec.scale, dropout=spec.dropout,
    )


def _check_softcap(kernel: Any, spec: AttentionSpec, dims: ModelDims, where: str) -> None:
    """Refuse at build a kernel that refuses every call with softcapping (the reasons a
    call gains when softcap is set), rather than at the first forward."""
    from txblocks.attention.kernel import AttentionCall
    from txblocks.attention.mask import FullMask

    call = AttentionCall(device=torch.device("cpu"), dtype=torch.float32, batch=1, q_len=4,
                         k_len=4, n_heads=dims.n_heads, n_kv_heads=dims.n_kv_heads,
                         head_dim=dims.head_dim, mask=FullMask(4, 4))  # fmt: skip
    plain = set(kernel.why_not(call))
    added = [r for r in kernel.why_not(dataclasses.replace(call, softcap=spec.softcap))
             if r not in plain]  # fmt: skip
    if added:
        raise BuildError(f"{where}.softcap: kernel {spec.kernel.type!r} cannot "
                         f"softcap scores: {'; '.join(added)}")


def _where(spec: ModelSpec, index: int, stack: Stack) -> str:
    n_layers = spec.stacks[stack]
    overrides = [
        j for j, o in enumerate(spec.layers)
        if o.stack in (stack, "both") and o.selects(index, n_layers)
    ]
    return f"layers[{overrides[-1]}] ({stack} layer {index})" if overrides else "block"


def _stack_blocks(spec: ModelSpec, dims: ModelDims, device: torch.device,
                  stack: Stack) -> tuple[list[TransformerBlock], list[Any]]:
    """The blocks of one stack and their mask strategies (equal mask specs share one object).

    Layers that ``share_layers`` joins are one block object, listed once per layer.
    """
    blocks: list[TransformerBlock] = []
    strategies, masks = {}, []
    n_layers = spec.stacks[stack]
    for i in range(n_layers):
        block = spec.block_for(i, stack)
        first = spec.share_layers.first_of(i, n_layers) if spec.share_layers else i
        if first != i:
            blocks.append(blocks[first])
        else:
            blocks.append(_block(spec, block, dims, device, stack, i))
        key = block.attention.mask.model_dump_json()
        if key not in strategies:
            strategies[key] = block.attention.mask.build()
        masks.append(strategies[key])
    return blocks, masks


def _block(spec: ModelSpec, block: BlockSpec, dims: ModelDims, device: torch.device,
           stack: Stack, i: int) -> TransformerBlock:
    """Layer ``i`` of ``stack``, its spec ``block``."""
    where = _where(spec, i, stack)
    cross = norm_cross = None
    if isinstance(spec, Seq2SeqSpec) and stack == "decoder":
        cross = _attention(spec.cross_attention_for(i), dims, device, "cross_attention", cross=True)
        norm_cross = block.norm.build(dims.d_model)

    def norm(present: bool) -> nn.Module | None:
        return block.norm.build(dims.d_model) if present else None

    def scale() -> LayerScale | None:
        return LayerScale(dims.d_model, block.layer_scale) if block.layer_scale else None

    return TransformerBlock(
        _attention(block.attention, dims, device, f"{where}.attention"),
        block.ffn.build(dims.d_model),
        block.norm.build(dims.d_model),
        norm(not block.shared_norm),
        layout=block.layout,
        dropout=block.dropout,
        cross_attention=cross,
        norm_cross=norm_cross,
        post_attention_norm=norm(block.post_attention_norm),
        post_ffn_norm=norm(block.post_ffn_norm),
        attention_scale=scale(),
        ffn_scale=scale(),
    )


def _embedded_width(spec: TextSpec) -> int:
    """The width of what is summed and normed in the embeddings: the token table's when the
    projection to d_model comes last, else d_model."""
    embedding = spec.embedding
    if embedding.width is not None and embedding.project_at == "end":
        return embedding.width
    return spec.d_model


def _embeddings(spec: TextSpec, tokens: nn.Embedding | None = None) -> Embeddings:
    embedding = spec.embedding
    scale, width = embedding.scale, embedding.width
    project = None
    if width is not None:
        project = nn.Linear(width, spec.d_model, bias=embedding.project_bias)
    summed = _embedded_width(spec)
    embeddings = Embeddings(
        spec.vocab_size,
        spec.d_model if width is None else width,
        token_types=embedding.token_types,
        scale=spec.d_model**0.5 if scale == "sqrt_d_model" else scale,
        norm=embedding.norm.build(summed) if embedding.norm else None,
        dropout=embedding.dropout,
        project=project,
        project_at=embedding.project_at,
    )
    if tokens is not None:
        embeddings.tokens = tokens
    return embeddings


def _position(spec: ModelSpec, dims: ModelDims) -> Any:
    """The positional scheme; what it adds to the embeddings is as wide as their sum."""
    if isinstance(spec, TextSpec) and _embedded_width(spec) != dims.d_model:
        dims = dataclasses.replace(dims, d_model=_embedded_width(spec))
    return spec.position.build(dims)


def _project_out(spec: ModelSpec) -> nn.Linear | None:
    """OPT-350m's projection of the output back to the token table's width, or None."""
    if not isinstance(spec, TextSpec) or not spec.embedding.project_out:
        return None
    width = spec.embedding.width or spec.d_model
    return nn.Linear(spec.d_model, width, bias=spec.embedding.project_bias)


def _final_norm(spec: ModelSpec) -> nn.Module | None:
    return spec.block.norm.build(spec.d_model) if spec.use_final_norm else None


def _front_end(spec: ModelSpec, dims: ModelDims, embeddings: Embeddings | None = None) -> nn.Module:
    """The module that turns raw inputs into the first hidden states: the spec's
    ``front_end``, or the architecture's own (``embeddings``, or a ViT's patches)."""
    patches = None
    if isinstance(spec, VitSpec):
        patches = {
            "image_size": spec.image_hw, "patch_size": spec.patch_hw, "channels": spec.channels,
            "dim": spec.d_model, "class_token": spec.class_token,
            "register_tokens": spec.register_tokens, "position": spec.patch_position,
            "dropout": spec.embedding_dropout,
        }  # fmt: skip
    if spec.front_end is None:
        return embeddings if embeddings is not None else PatchEmbedding(**patches)  # type: ignore[arg-type]
    return spec.front_end.build(FrontEndInputs(dims, spec.arch, embeddings, patches))


def _stack(spec: TextSpec, dims: ModelDims, device: torch.device, stack: Stack,
           tokens: nn.Embedding | None = None) -> TransformerStack:
    blocks, masks = _stack_blocks(spec, dims, device, stack)
    embeddings: nn.Module | None = _embeddings(spec, tokens)
    if stack == "encoder":
        embeddings = _front_end(spec, dims, embeddings)  # type: ignore[arg-type]
    return TransformerStack(embeddings, _position(spec, dims), blocks, masks, _final_norm(spec))  # type: ignore[arg-type]


def _build(spec: ModelSpec, dims: ModelDims, device: torch.device) -> Model:
    if isinstance(spec, Seq2SeqSpec):
        encoder = _stack(spec, dims, device, "encoder")
        front_end = None
        if not isinstance(encoder.embeddings, Embeddings):  # audio: the model runs it first
            front_end, encoder.embeddings = encoder.embeddings, None
        shared = None
        if spec.shared_embeddings and encoder.embeddings is not None:
            shared = encoder.embeddings.tokens
        decoder_dims = ModelDims(**{**dims.__dict__, "n_layers": spec.stacks["decoder"],
                                    "max_seq_len": spec.max_seq_len_of("decoder")})
        decoder = _stack(spec, decoder_dims, device, "decoder", shared)
        tokens = decoder.embeddings.tokens  # type: ignore[union-attr]
        head = spec.head.build(dims, tokens) if spec.head is not None else None
        return Seq2SeqModel(encoder, decoder, head, front_end=front_end)
    if isinstance(spec, VitSpec):
        patches = _front_end(spec, dims)
        blocks, masks = _stack_blocks(spec, dims, device, "encoder")
        head = spec.head.build(dims, None) if spec.head is not None else None
        return VisionTransformer(patches, spec.position.build(dims), blocks, masks,
                                 _final_norm(spec), head)
    assert isinstance(spec, TextSpec)
    stack: Stack = "decoder" if spec.arch == "decoder" else "encoder"
    blocks, masks = _stack_blocks(spec, dims, device, stack)
    embeddings = _front_end(spec, dims, _embeddings(spec))
    project_out = _project_out(spec)
    head_dims = dims
    if project_out is not None:
        head_dims = dataclasses.replace(dims, d_model=project_out.out_features)
    head = spec.head.build(head_dims, embeddings.tokens) if spec.head is not None else None
    return TransformerModel(embeddings, _position(spec, dims), blocks, masks,
                            _final_norm(spec), head, project_out=project_out)


def init_weights(model: nn.Module, std: float) -> None:
    """Normal(0, std) for linear, conv and embedding weights and learned tokens; zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, PatchEmbedding):
            for param in (module.cls_token, module.registers, module.position):
                if param is not None:
                    nn.init.normal_(param, std=std)


def _after_build(model: nn.Module, spec: ModelSpec, registry: Registry | None) -> None:
    if registry is None:
        from txblocks.plugins import default_registry

        registry = default_registry()
    if registry.plugin_manager is not None:
        registry.plugin_manager.hook.txblocks_after_build(model=model, spec=spec)
    elif spec.adapters:
        raise BuildError("adapters: this registry has no plugin manager to apply them; use load_registry()")


@dataclass(frozen=True)
class ModelSize:
    """What building a spec allocates: its parameters (tied ones once) and the bytes of its
    parameters and buffers at ``dtype``."""

    parameters: int
    bytes: int
    dtype: torch.dtype

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.parameters:,} parameters, {human_bytes(self.bytes)} in {dtype}"


def device_memory(device: str | torch.device) -> int | None:
    """Total memory of ``device`` in bytes: a GPU's, or the machine's RAM for ``cpu``; None
    where unknown (other devices, systems without ``sysconf``)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return None
    return None


def _assemble(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None,
              registry: Registry | None, *, on: torch.device) -> Model:
    """The float model of ``spec``, tensors on ``on`` (the meta device when only measuring);
    kernels are checked against ``device``."""
    with torch.device(on):
        model = _build(spec, dims_of(spec), device)
    if on.type != "meta":
        init_weights(model, spec.init_std)
    model.spec = spec
    _after_build(model, spec, registry)
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def measure(model: nn.Module, dtype: torch.dtype | None = None) -> ModelSize:
    """The size of a built model, on any device (meta included); ``dtype`` is the label."""
    params = list(model.parameters())  # tied parameters once
    tensors = {id(t): t for t in (*params, *model.buffers())}.values()
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return ModelSize(sum(p.numel() for p in params), nbytes, dtype or torch.get_default_dtype())


def build_on_meta(spec: Any, *, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, registry: Registry | None = None) -> Model:
    """The float model :func:`build` makes of ``spec`` (no ``quantization``), every tensor on
    the meta device: names and shapes, no data, nothing allocated. Kernels are checked
    against ``device``, where the real model would go (default: not checked)."""
    spec = load_spec(spec, registry=registry)
    target = torch.device(device if device is not None else "meta")
    return _assemble(spec, target, dtype, registry, on=torch.device("meta"))


def model_size(spec: Any, *, dtype: torch.dtype | None = None,
               registry: Registry | None = None) -> ModelSize:
    """The exact size of the model ``spec`` describes, every component and plugin included,
    measured on the meta device (:func:`build_on_meta`): nothing is allocated.

    Raises:
        SpecError: the spec is invalid (including over :mod:`txblocks.spec.limits`).
        BuildError: its components cannot be built here.
    """
    return measure(build_on_meta(spec, dtype=dtype, registry=registry), dtype)


def _label(source: Any, spec: ModelSpec) -> str:
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.strip().endswith((".yaml", ".yml", ".json"))):
        return f"spec {source}"
    return f"spec {spec.name!r}"


def _check_fits(spec: ModelSpec, label: str, device: torch.device, dtype: torch.dtype | None,
                registry: Registry | None, max_params: int | None, allow_large: bool) -> None:
    """Refuse, before allocating, a model over ``max_params`` or the memory of ``device``."""
    if device.type == "meta" or (allow_large and max_params is None):
        return
    try:
        meta = build_on_meta(spec, device=device, registry=registry)
    except (RuntimeError, NotImplementedError):
        return  # a component that cannot be built on meta: the limits of validation stand
    size = measure(meta)  # the peak: build allocates in the default dtype, then casts
    if dtype is not None and dtype.itemsize > torch.get_default_dtype().itemsize:
        size = measure(meta.to(dtype=dtype), dtype)
    if max_params is not None and size.parameters > max_params:
        raise BuildError(f"{label} implies {size}, over max_params={max_params:,}")
    memory = None if allow_large else device_memory(device)
    if memory is not None and size.bytes > memory:
        raise BuildError(
            f"{label} implies {size} (parameters and buffers), more than {device} can hold "
            f"({human_bytes(memory)}); reduce its sizes, or pass build(..., allow_large=True) "
            "to try anyway")


def build(
    spec: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    registry: Registry | None = None,
    max_params: int | None = None,
    allow_large: bool = False,
) -> Model:
    """Assemble a model from a spec.

    Before anything is allocated, the model is built on the meta device and measured
    (:func:`model_size`): a model whose parameters and buffers exceed the memory of
    ``device`` (:func:`device_memory`), or whose parameters exceed ``max_params``, is refused.

    Args:
        spec: a spec, or anything :func:`txblocks.load_spec` accepts.
        device: where to build (default CPU).
        dtype: parameter dtype (default torch's default, float32).
        registry: for specs given as paths, text or dicts; default
            :func:`txblocks.default_registry`.
        max_params: refuse a model of more parameters than this.
        allow_large: skip the device-memory check (``max_params`` still applies).

    Returns:
        A :class:`TransformerModel` (decoder, encoder), :class:`Seq2SeqModel` or
        :class:`VisionTransformer`, initialised (normal(0, ``init_std``)), in training
        mode like any new ``nn.Module``; ``model.spec`` holds the spec. A spec that declares
        ``quantization`` gives a model whose linear layers are int8 (:func:`txblocks.quantize`),
        applied after the dtype cast.

    Raises:
        SpecError: the spec is invalid, or over the limits of :mod:`txblocks.spec.limits`.
        BuildError: the spec is valid but cannot be built here (a CUDA-only kernel on CPU;
            a model larger than the device or ``max_params``, with the numbers; a
            ``quantization`` without torchao installed: :class:`QuantizationError`).
    """
    source = spec
    spec = load_spec(spec, registry=registry)
    device = torch.device(device if device is not None else "cpu")
    _check_fits(spec, _label(source, spec), device, dtype, registry, max_params, allow_large)
    model = _assemble(spec, device, dtype, registry, on=device)
    if spec.quantization is not None:  # last: int8 weights take no further casts
        apply_quantization(model, spec.quantization)
    return model
