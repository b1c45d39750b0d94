"""The one place where a spec becomes modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from txblocks.errors import BuildError
from txblocks.nn.attention import Attention
from txblocks.nn.block import TransformerBlock
from txblocks.nn.dims import ModelDims
from txblocks.nn.embeddings import Embeddings
from txblocks.nn.model import Seq2SeqModel, TransformerModel, TransformerStack
from txblocks.nn.vit import PatchEmbedding, VisionTransformer
from txblocks.quantize import apply_quantization
from txblocks.registry import Registry
from txblocks.spec.checks import dims_of
from txblocks.spec.io import load_spec
from txblocks.spec.models import AttentionSpec, ModelSpec, Seq2SeqSpec, Stack, TextSpec, VitSpec

__all__ = ["build", "init_weights"]

Model = TransformerModel | Seq2SeqModel | VisionTransformer


def _attention(spec: AttentionSpec, dims: ModelDims, device: torch.device, where: str,
               *, cross: bool = False) -> Attention:
    kernel = spec.kernel.build()
    reasons = kernel.why_not_on(device)
    if reasons:
        raise BuildError(
            f"{where}.kernel: {spec.kernel.type!r} cannot run on {device}: {'; '.join(reasons)}"
        )
    q_norm = k_norm = None
    if spec.qk_norm is not None:
        q_norm, k_norm = spec.qk_norm.build(dims.head_dim), spec.qk_norm.build(dims.head_dim)
    return Attention(
        dims.d_model, dims.n_heads, dims.n_kv_heads, dims.head_dim, kernel,
        qkv_bias=spec.bias if spec.qkv_bias is None else spec.qkv_bias,
        out_bias=spec.bias if spec.out_bias is None else spec.out_bias,
        fused_qkv=spec.fused_qkv and not cross,
        q_norm=q_norm, k_norm=k_norm,
        softcap=spec.softcap, scale=spec.scale, dropout=spec.dropout,
    )


def _where(spec: ModelSpec, index: int, stack: Stack) -> str:
    n_layers = spec.stacks[stack]
    overrides = [
        j for j, o in enumerate(spec.layers)
        if o.stack in (stack, "both") and o.selects(index, n_layers)
    ]
    return f"layers[{overrides[-1]}] ({stack} layer {index})" if overrides else "block"


def _stack_blocks(spec: ModelSpec, dims: ModelDims, device: torch.device,
                  stack: Stack) -> tuple[list[TransformerBlock], list[Any]]:
    """The blocks of one stack and their mask strategies (equal mask specs share one object)."""
    blocks, strategies = [], {}
    masks = []
    for i in range(spec.stacks[stack]):
        block = spec.block_for(i, stack)
        where = _where(spec, i, stack)
        cross = norm_cross = None
        if isinstance(spec, Seq2SeqSpec) and stack == "decoder":
            cross = _attention(spec.cross_attention_for(i), dims, device, "cross_attention", cross=True)
            norm_cross = block.norm.build(dims.d_model)
        blocks.append(
            TransformerBlock(
                _attention(block.attention, dims, device, f"{where}.attention"),
                block.ffn.build(dims.d_model),
                block.norm.build(dims.d_model),
                block.norm.build(dims.d_model),
                layout=block.layout,
                dropout=block.dropout,
                cross_attention=cross,
                norm_cross=norm_cross,
            )
        )
        key = block.attention.mask.model_dump_json()
        if key not in strategies:
            strategies[key] = block.attention.mask.build()
        masks.append(strategies[key])
    return blocks, masks


def _embeddings(spec: TextSpec, tokens: nn.Embedding | None = None) -> Embeddings:
    scale = spec.embedding.scale
    embeddings = Embeddings(
        spec.vocab_size,
        spec.d_model,
        token_types=spec.embedding.token_types,
        scale=spec.d_model**0.5 if scale == "sqrt_d_model" else scale,
        norm=spec.embedding.norm.build(spec.d_model) if spec.embedding.norm else None,
        dropout=spec.embedding.dropout,
    )
    if tokens is not None:
        embeddings.tokens = tokens
    return embeddings


def _final_norm(spec: ModelSpec) -> nn.Module | None:
    return spec.block.norm.build(spec.d_model) if spec.use_final_norm else None


def _stack(spec: TextSpec, dims: ModelDims, device: torch.device, stack: Stack,
           tokens: nn.Embedding | None = None) -> TransformerStack:
    blocks, masks = _stack_blocks(spec, dims, device, stack)
    return TransformerStack(_embeddings(spec, tokens), spec.position.build(dims), blocks, masks,
                            _final_norm(spec))


def _build(spec: ModelSpec, dims: ModelDims, device: torch.device) -> Model:
    if isinstance(spec, Seq2SeqSpec):
        encoder = _stack(spec, dims, device, "encoder")
        shared = encoder.embeddings.tokens if spec.shared_embeddings else None  # type: ignore[union-attr]
        decoder_dims = ModelDims(**{**dims.__dict__, "n_layers": spec.stacks["decoder"]})
        decoder = _stack(spec, decoder_dims, device, "decoder", shared)
        tokens = decoder.embeddings.tokens  # type: ignore[union-attr]
        head = spec.head.build(dims, tokens) if spec.head is not None else None
        return Seq2SeqModel(encoder, decoder, head)
    if isinstance(spec, VitSpec):
        patches = PatchEmbedding(
            spec.image_hw, spec.patch_hw, spec.channels, spec.d_model,
            class_token=spec.class_token, register_tokens=spec.register_tokens,
            position=spec.patch_position, dropout=spec.embedding_dropout,
        )
        blocks, masks = _stack_blocks(spec, dims, device, "encoder")
        head = spec.head.build(dims, None) if spec.head is not None else None
        return VisionTransformer(patches, spec.position.build(dims), blocks, masks,
                                 _final_norm(spec), head)
    assert isinstance(spec, TextSpec)
    stack: Stack = "decoder" if spec.arch == "decoder" else "encoder"
    blocks, masks = _stack_blocks(spec, dims, device, stack)
    embeddings = _embeddings(spec)
    head = spec.head.build(dims, embeddings.tokens) if spec.head is not None else None
    return TransformerModel(embeddings, spec.position.build(dims), blocks, masks,
                            _final_norm(spec), head)


def init_weights(model: nn.Module, std: float) -> None:
    """Normal(0, std) for linear, conv and embedding weights and learned tokens; zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
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


def build(
    spec: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    registry: Registry | None = None,
) -> Model:
    """Assemble a model from a spec.

    Args:
        spec: a spec, or anything :func:`txblocks.load_spec` accepts.
        device: where to build (default CPU).
        dtype: parameter dtype (default torch's default, float32).
        registry: for specs given as paths, text or dicts; default
            :func:`txblocks.default_registry`.

    Returns:
        A :class:`TransformerModel` (decoder, encoder), :class:`Seq2SeqModel` or
        :class:`VisionTransformer`, initialised (normal(0, ``init_std``)), in training
        mode like any new ``nn.Module``; ``model.spec`` holds the spec. A spec that declares
        ``quantization`` gives a model whose linear layers are int8 (:func:`txblocks.quantize`),
        applied after the dtype cast.

    Raises:
        SpecError: the spec is invalid.
        BuildError: the spec is valid but cannot be built here (a CUDA-only kernel on CPU;
            a ``quantization`` without torchao installed: :class:`QuantizationError`).
    """
    spec = load_spec(spec, registry=registry)
    device = torch.device(device if device is not None else "cpu")
    with torch.device(device):
        model = _build(spec, dims_of(spec), device)
    init_weights(model, spec.init_std)
    model.spec = spec
    _after_build(model, spec, registry)
    if dtype is not None:
        model.to(dtype=dtype)
    if spec.quantization is not None:  # last: int8 weights take no further casts
        apply_quantization(model, spec.quantization)
    return model
