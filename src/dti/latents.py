"""Training images as VAE latents, each image encoded once per run.

An image is resized so its shorter side equals the resolution, then encoded WHOLE; the latent
distribution (mean, std) is kept. A training sample is a random crop of that distribution in latent
space (an 8-pixel-aligned crop of the resized image) and a fresh draw mean + std * eps: the same
stochastic VAE sample TI takes every step, without re-running the encoder. `EncodeEveryStep` does the
pixel-space crop and encodes it every step; it exists to measure what the cache saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dti.errors import DtiError


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


def vae_factor(vae) -> int:
    """Pixels per latent cell along each side (8 for SD and SDXL)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_resolution(resolution: int, vae) -> None:
    factor = vae_factor(vae)
    if resolution < factor or resolution % factor:
        raise DtiError(f"resolution {resolution} must be a positive multiple of {factor}, this model's "
                       "pixels per latent cell")


class LatentSource:
    """Latents for crops of the training images; subclasses decide when the VAE runs."""

    def __init__(self, vae, images: list[Image.Image], resolution: int):
        self.vae = vae
        self.factor = vae_factor(vae)
        check_resolution(resolution, vae)
        self.resolution = resolution
        self.cells = resolution // self.factor
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
        return (mean + std * eps.to(mean.device)) * float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.unsqueeze(0).to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mean[0].float(), dist.std[0].float()


class CachedLatents(LatentSource):
    def __init__(self, vae, images, resolution):
        super().__init__(vae, images, resolution)
        self.cache = [self._encode(p) for p in self.pixels]

    def distribution(self, crop: Crop):
        mean, std = self.cache[crop.image]
        window = (slice(None), slice(crop.top, crop.top + self.cells), slice(crop.left, crop.left + self.cells))
        return mean[window], std[window]


class EncodeEveryStep(LatentSource):
    def distribution(self, crop: Crop):
        f, size = self.factor, self.resolution
        pixels = self.pixels[crop.image][:, crop.top * f : crop.top * f + size, crop.left * f : crop.left * f + size]
        return self._encode(pixels)
