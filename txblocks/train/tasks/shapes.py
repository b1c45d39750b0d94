"""``shapes``: classify generated images of a square, a circle, a triangle or a cross (ViT).

Each image holds one filled shape on a black background, centred at a random pixel
(cx, cy) with a random "radius" r ≥ 2, at a random brightness, plus optional noise.
With x, y pixel coordinates:

* square: |x − cx| ≤ r and |y − cy| ≤ r
* circle: (x − cx)² + (y − cy)² ≤ r²
* triangle (pointing up): |y − cy| ≤ r and 2·|x − cx| ≤ y − cy + r
* cross (a plus sign): |x − cx| ≤ r, |y − cy| ≤ r, and |x − cx| ≤ t or |y − cy| ≤ t, t = r // 3
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from txblocks.spec.models import ModelSpec, VitSpec
from txblocks.train.tasks.base import Batch, Example, LabelledTask, check_classifier

CLASSES = ("square", "circle", "triangle", "cross")


def masks(labels: Tensor, cx: Tensor, cy: Tensor, r: Tensor, height: int, width: int) -> Tensor:
    """Boolean (B, H, W): the pixels of each shape (see the module docstring)."""
    y = torch.arange(height).view(1, height, 1)
    x = torch.arange(width).view(1, 1, width)
    dx = (x - cx.view(-1, 1, 1)).abs()
    dy = y - cy.view(-1, 1, 1)
    r = r.view(-1, 1, 1)
    box = (dx <= r) & (dy.abs() <= r)
    shapes = torch.stack([
        box,
        dx**2 + dy**2 <= r**2,
        (dy.abs() <= r) & (2 * dx <= dy + r),
        box & ((dx <= r // 3) | (dy.abs() <= r // 3)),
    ], dim=1)  # (B, 4, H, W)
    return shapes[torch.arange(labels.shape[0]), labels]


class ShapesTask(LabelledTask):
    """ViT classification of four shapes; needs ``head: {type: classifier, n_classes: 4}``.

    Args:
        image_size: (height, width) of the images, the spec's ``image_size``.
        channels: the spec's ``channels``; every channel holds the same picture.
        noise: std of Gaussian noise added to every pixel.
    """

    name = "shapes"
    archs = ("vit",)
    description = "vit: an image of a square, circle, triangle or cross -> its class (n_classes 4)"
    tokenizer = None

    def __init__(self, image_size: tuple[int, int] = (16, 16), channels: int = 1,
                 noise: float = 0.05) -> None:
        if min(image_size) < 5:
            raise ValueError(f"image_size is {image_size}; shapes need at least 5x5 pixels")
        self.size = (channels, image_size[0], image_size[1])
        self.noise = noise

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> ShapesTask:
        """Images of the spec's size and channels (defaults for other archs)."""
        if isinstance(spec, VitSpec) and min(spec.image_hw) >= 5:
            return cls(spec.image_hw, spec.channels)
        return cls()

    def check(self, spec: ModelSpec) -> list[str]:
        problems = check_classifier(spec, self.name, len(CLASSES))
        if isinstance(spec, VitSpec):
            h, w = spec.image_hw
            if min(h, w) < 5:
                problems.append(f"image_size is {h}x{w}; task {self.name!r} draws shapes of at "
                                "least 5x5 pixels")
            elif (spec.channels, h, w) != self.size:
                problems.append(f"image_size {h}x{w} with {spec.channels} channels; this task "
                                f"draws {self.size[1]}x{self.size[2]} images with {self.size[0]}")
        return problems

    def draw(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) in [0, 1] plus noise, and their labels (B,)."""
        channels, height, width = self.size
        labels = torch.randint(0, len(CLASSES), (size,), generator=generator)
        biggest = (min(height, width) - 1) // 2
        r = torch.randint(2, max(biggest, 2) + 1, (size,), generator=generator)
        unit = torch.rand(2, size, generator=generator)
        cx = r + (unit[0] * (width - 2 * r)).long()  # the whole shape inside the image
        cy = r + (unit[1] * (height - 2 * r)).long()
        brightness = 0.5 + 0.5 * torch.rand(size, 1, 1, generator=generator)
        image = masks(labels, cx, cy, r, height, width).float() * brightness
        pixels = image[:, None].expand(-1, channels, -1, -1)
        if self.noise:
            pixels = pixels + self.noise * torch.randn(pixels.shape, generator=generator)
        return pixels.contiguous(), labels

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        pixels, labels = self.draw(size, generator)
        return Batch({"pixel_values": pixels}, labels)

    @torch.no_grad()
    def examples(self, model: nn.Module, n: int, generator: torch.Generator) -> list[Example]:
        pixels, labels = self.draw(n, generator)
        param = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            logits = model(pixel_values=pixels.to(param.device, param.dtype)).logits
        finally:
            model.train(was_training)
        _, height, width = self.size
        return [Example(f"{height}x{width} image", CLASSES[g], CLASSES[t])
                for g, t in zip(logits.argmax(-1).tolist(), labels.tolist(), strict=True)]
