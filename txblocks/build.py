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
from txblocks.nn.model import TransformerModel
from txblocks.registry import Registry
from txblocks.spec.checks import dims_of
from txblocks.spec.io import load_spec
from txblocks.spec.models import BlockSpec, ModelSpec

__all__ = ["build"]


def _attention(block: BlockSpec, dims: ModelDims, device: torch.device, where: str) -> Attention:
    spec = block.attention
    kernel = spec.kernel.build()
    reasons = kernel.why_not_on(device)
    if reasons:
        raise BuildError(
            f"{where}.attention.kernel: {spec.kernel.type!r} cannot run on {device}: "
            f"{'; '.join(reasons)}"
        )
    q_norm = k_norm = None
    if spec.qk_norm is not None:
        q_norm, k_norm = spec.qk_norm.build(dims.head_dim), spec.qk_norm.build(dims.head_dim)
    return Attention(
        dims.d_model, dims.n_heads, dims.n_kv_heads, dims.head_dim, kernel,
        qkv_bias=spec.bias if spec.qkv_bias is None else spec.qkv_bias,
        out_bias=spec.bias if spec.out_bias is None else spec.out_bias,
        fused_qkv=spec.fused_qkv,
        q_norm=q_norm, k_norm=k_norm,
        softcap=spec.softcap, scale=spec.scale, dropout=spec.dropout,
    )


def _block(block: BlockSpec, dims: ModelDims, device: torch.device, where: str) -> TransformerBlock:
    return TransformerBlock(
        _attention(block, dims, device, where),
        block.ffn.build(dims.d_model),
        block.norm.build(dims.d_model),
        block.norm.build(dims.d_model),
        layout=block.layout,
        dropout=block.dropout,
    )


def _embedding_scale(spec: ModelSpec) -> float | None:
    scale = spec.embedding.scale
    return spec.d_model**0.5 if scale == "sqrt_d_model" else scale


def init_weights(model: nn.Module, std: float) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases, norms reset."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)


def build(
    spec: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    registry: Registry | None = None,
) -> TransformerModel:
    """Assemble a model from a spec.

    Args:
        spec: a spec, or anything :func:`txblocks.load_spec` accepts.
        device: where to build (default CPU).
        dtype: parameter dtype (default torch's default, float32).
        registry: for specs given as paths, text or dicts; default
            :func:`txblocks.default_registry`.

    Returns:
        The model, initialised (normal(0, ``init_std``)), in training mode like any
        new ``nn.Module``; ``model.spec`` holds the spec.

    Raises:
        SpecError: the spec is invalid.
        BuildError: the spec is valid but cannot be built here (a CUDA-only kernel on CPU).
    """
    spec = load_spec(spec, registry=registry)
    dims = dims_of(spec)
    device = torch.device(device if device is not None else "cpu")
    blocks, masks = [], []
    with torch.device(device):
        position = spec.position.build(dims)
        embeddings = Embeddings(
            spec.vocab_size,
            spec.d_model,
            token_types=spec.embedding.token_types,
            scale=_embedding_scale(spec),
            norm=spec.embedding.norm.build(spec.d_model) if spec.embedding.norm else None,
            dropout=spec.embedding.dropout,
        )
        for i in range(spec.n_layers):
            block = spec.block_for(i)
            overrides = [j for j, o in enumerate(spec.layers) if o.selects(i, spec.n_layers)]
            where = f"layers[{overrides[-1]}] (layer {i})" if overrides else "block"
            blocks.append(_block(block, dims, device, where))
            masks.append(block.attention.mask)
        final_norm = spec.block.norm.build(spec.d_model) if spec.use_final_norm else None
        head = spec.head.build(dims, embeddings.tokens) if spec.head is not None else None
    # Blocks with equal mask specs share one strategy object, so masks are built once per forward.
    strategies: dict[str, Any] = {}
    for mask in masks:
        key = mask.model_dump_json()
        if key not in strategies:
            strategies[key] = mask.build()
    mask_objects = [strategies[m.model_dump_json()] for m in masks]
    model = TransformerModel(embeddings, position, blocks, mask_objects, final_norm, head)
    init_weights(model, spec.init_std)
    model.spec = spec
    if dtype is not None:
        model.to(dtype=dtype)
    return model
