"""Image preprocessing shared by the data loader, smoke tests and generation (SigLIP's recipe).

SigLIP resizes to a square (bicubic), rescales to [0, 1] and normalises with mean 0.5 and std 0.5,
so pixel values lie in [-1, 1].
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def load_image(data: bytes | Image.Image) -> Image.Image:
    """Decode image bytes (or pass a PIL image through) as RGB."""
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    return img.convert("RGB")


# (x / 255 - mean) / std as (x - 255 mean) / (255 std): two in-place ops, exact at 0 and 255
_MEAN255 = torch.tensor([255 * m for m in SIGLIP_MEAN]).view(3, 1, 1)
_STD255 = torch.tensor([255 * s for s in SIGLIP_STD]).view(3, 1, 1)


def resized_pixels(img: bytes | Image.Image, size: int) -> np.ndarray:
    """One image -> uint8 array [size, size, 3]: decoded, RGB, resized (bicubic); not normalised."""
    img = load_image(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.array(img)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [size, size, 3] -> float32 [3, size, size], SigLIP-normalised."""
    t = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
    return t.sub_(_MEAN255).div_(_STD255)


def preprocess_image(img: bytes | Image.Image, size: int) -> torch.Tensor:
    """One image -> float32 tensor [3, size, size], SigLIP-normalised."""
    return normalise(resized_pixels(img, size))


def preprocess_images(images: list[bytes | Image.Image], size: int) -> torch.Tensor:
    """A batch of images -> [B, 3, size, size]."""
    return torch.stack([preprocess_image(i, size) for i in images])
