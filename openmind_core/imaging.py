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


def preprocess_image(img: bytes | Image.Image, size: int) -> torch.Tensor:
    """One image -> float32 tensor [3, size, size], SigLIP-normalised."""
    img = load_image(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    mean = torch.tensor(SIGLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(SIGLIP_STD).view(3, 1, 1)
    return (t - mean) / std


def preprocess_images(images: list[bytes | Image.Image], size: int) -> torch.Tensor:
    """A batch of images -> [B, 3, size, size]."""
    return torch.stack([preprocess_image(i, size) for i in images])
