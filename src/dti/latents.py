"""Training images as VAE latents, each image encoded once per run.

An image is resized so its shorter side equals the resolution, then encoded WHOLE; the latent
distribution (mean, std) is kept. A training sample is a random crop of that distribution in latent
space (a crop of the resized image aligned to the VAE's cells: 8 pixels for SD, 32 for SANA's DC-AE) and
a fresh draw mean + std * eps: the same stochastic VAE sample TI takes every step, without re-running the
encoder. Deterministic encoders (DC-AE) and the authors' Wan recipe (the distribution's mode) have std 0.
`EncodeEveryStep` does the pixel-space crop and encodes it every step; it exists to measure what the cache
saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def resize_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return image.resize(size, Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> float tensor [3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass
class Crop:
    image: int
    top: int  # in latent cells
    left: int


class LatentSource:
    """Latents for crops of the training images; subclasses decide when the VAE runs. The backbone says how
    its VAE encodes (`encode_pixels`), how many pixels a latent cell covers and how a latent is scaled for
    its denoiser (`to_model_latents`)."""

    def __init__(self, backbone, images: list[Image.Image], resolution: int):
        self.backbone = backbone
        self.factor = backbone.latent_factor
        backbone.check_resolution(resolution)
        self.resolution = resolution
        self.cells = resolution // self.factor
        self.shape = tuple(backbone.latent_shape(self.cells))  # one training latent
        self.original_sizes = [(img.height, img.width) for img in images]
        self.pixels = [to_tensor(resize_shorter_side(img, resolution)) for img in images]
        self.grid = [(p.shape[1] // self.factor, p.shape[2] // self.factor) for p in self.pixels]

    def random_crop(self, gen: torch.Generator, n_images: int) -> Crop:
        i = int(torch.randint(n_images, (1,), generator=gen))
        rows, cols = self.grid[i]
        top = int(torch.randint(rows - self.cells + 1, (1,), generator=gen))
        left = int(torch.randint(cols - self.cells + 1, (1,), generator=gen))
        return Crop(i, top, left)

    def time_ids(self, crop: Crop) -> list[int]:
        """SDXL's (orig h, orig w, crop top, crop left, target h, target w), crop in resized pixels."""
        h, w = self.original_sizes[crop.image]
        return [h, w, crop.top * self.factor, crop.left * self.factor, self.resolution, self.resolution]

    def distribution(self, crop: Crop) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample(self, crop: Crop, eps: torch.Tensor) -> torch.Tensor:
        mean, std = self.distribution(crop)
        return self.backbone.to_model_latents(mean + std * eps.to(mean.device))

    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.encode_pixels(pixels)


class CachedLatents(LatentSource):
    def __init__(self, backbone, images, resolution):
        super().__init__(backbone, images, resolution)
        self.cache = [self._encode(p) for p in self.pixels]

    def distribution(self, crop: Crop):
        mean, std = self.cache[crop.image]
        window = (..., slice(crop.top, crop.top + self.cells), slice(crop.left, crop.left + self.cells))
        return mean[window], std[window]


class EncodeEveryStep(LatentSource):
    def distribution(self, crop: Crop):
        f, size = self.factor, self.resolution
        pixels = self.pixels[crop.image][:, crop.top * f : crop.top * f + size, crop.left * f : crop.left * f + size]
        return self._encode(pixels)
