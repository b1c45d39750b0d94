"""Vision Transformer pieces (Dosovitskiy et al. 2021).

Shapes: B batch, C channels, H/W image height/width, N patches, P prefix tokens
(class + registers), D d_model.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from txblocks.nn.block import TransformerBlock
from txblocks.nn.model import ModelOutput, TransformerStack
from txblocks.nn.positional import PositionalScheme

PatchPosition = Literal["learned", "sincos2d", "none"]


def sincos_2d(grid_h: int, grid_w: int, dim: int, *, base: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos positions (N, D), as in MAE / "Better plain ViT baselines".

    The first half of the width encodes the row (height) index, the second half the
    column, each as [sin(pos·ω), cos(pos·ω)] with ω_k = base^(-k / (D/4)).
    """
    quarter = dim // 4
    omega = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class PatchEmbedding(nn.Module):
    """Pixels (B, C, H, W) -> tokens (B, P + N, D): [class], [registers], patches.

    Args:
        image_size, patch_size: (height, width) in pixels; the grid is their ratio.
        channels: C.
        dim: D.
        class_token: prepend a learned class token.
        register_tokens: learned register tokens after the class token (no position).
        position: ``learned`` (one row per patch, plus one for the class token),
            ``sincos2d`` (fixed), or ``none``. Other image sizes interpolate the
            learned grid bicubically, as timm and Hugging Face do.
        dropout: on the result.
        norm: a norm over every token (class, registers, patches, positions added) before
            the dropout: CLIP's ``pre_layrnorm`` (Radford et al. 2021), or None.
        bias: a bias on the patch projection (CLIP has none).
    """

    def __init__(self, image_size: tuple[int, int], patch_size: tuple[int, int], channels: int,
                 dim: int, *, class_token: bool = True, register_tokens: int = 0,
                 position: PatchPosition = "learned", dropout: float = 0.0,
                 norm: nn.Module | None = None, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.dim = dim
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.registers = nn.Parameter(torch.zeros(1, register_tokens, dim)) if register_tokens else None
        self.position_kind = position
        rows = self.grid[0] * self.grid[1] + (1 if class_token else 0)
        self.position = nn.Parameter(torch.zeros(1, rows, dim)) if position == "learned" else None
        self.norm = norm
        self.dropout = nn.Dropout(dropout)

    @property
    def prefix(self) -> int:
        """P: class and register tokens before the patches."""
        cls = 1 if self.cls_token is not None else 0
        return cls + (self.registers.shape[1] if self.registers is not None else 0)

    def _patch_positions(self, grid: tuple[int, int], dtype: torch.dtype) -> Tensor | None:
        if self.position_kind == "sincos2d":
            return sincos_2d(*grid, self.dim).to(self.proj.weight.device, dtype)[None]
        if self.position is None:
            return None
        table = self.position[:, 1:] if self.cls_token is not None else self.position
        if grid == self.grid:
            return table
        table = rearrange(table, "1 (h w) d -> 1 d h w", h=self.grid[0])
        table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False)
        return rearrange(table, "1 d h w -> 1 (h w) d").to(dtype)

    def forward(self, pixel_values: Tensor) -> Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.proj.in_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        h, w = pixel_values.shape[-2:]
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"image {h}x{w} is not divisible into {self.patch_size} patches")
        x = self.proj(pixel_values.to(self.proj.weight.dtype))  # (B, D, H/ph, W/pw)
        grid = (x.shape[2], x.shape[3])
        x = rearrange(x, "b d h w -> b (h w) d")
        positions = self._patch_positions(grid, x.dtype)
        if positions is not None:
            x = x + positions
        prefix = []
        if self.cls_token is not None:
            cls = self.cls_token
            if self.position is not None:
                cls = cls + self.position[:, :1]
            prefix.append(cls.expand(x.shape[0], -1, -1))
        if self.registers is not None:
            prefix.append(self.registers.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class VisionTransformer(TransformerStack):
    """Patch embedding, an encoder stack, and a head (classifier) over the tokens.

    The head receives a mask that marks the patch tokens, so mean pooling averages
    patches only, while ``cls`` pooling reads the class token.
    """

    def __init__(self, patch_embed: PatchEmbedding, position: PositionalScheme,
                 blocks: list[TransformerBlock], masks: list[Any],
                 final_norm: nn.Module | None = None, head: nn.Module | None = None) -> None:
        super().__init__(None, position, blocks, masks, final_norm)
        self.patch_embed = patch_embed
        self.head = head
        self.spec: Any = None

    def forward(self, pixel_values: Tensor | None = None, *,
                inputs_embeds: Tensor | None = None) -> ModelOutput:
        """``pixel_values`` (B, C, H, W) -> hidden (B, P + N, D) and logits.

        ``inputs_embeds`` (B, P + N, D) replaces what the patch embedding makes of the pixels
        (class and register tokens, positions and its norm included); the blocks run on it.
        """
        if (pixel_values is None) == (inputs_embeds is None):
            raise ValueError("pass pixel_values or inputs_embeds (one of them)")
        tokens = self.patch_embed(pixel_values) if inputs_embeds is None else inputs_embeds
        x, aux = self.run(inputs_embeds=tokens)
        logits = None
        if self.head is not None:
            patches = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
            patches[:, : self.patch_embed.prefix] = 0
            logits = self.head(x, patches)
        return ModelOutput(last_hidden_state=x, logits=logits, aux_loss=aux)
