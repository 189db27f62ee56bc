"""Image preprocessing shared by the data loader, smoke tests and generation (PIL images, image bytes, or image files by path).

SigLIP's recipe by default: resize to a square (bicubic), rescale to [0, 1] and normalise with
mean 0.5 and std 0.5, so pixel values lie in [-1, 1].  A vision checkpoint with its own image
processor (``preprocessor_config.json``: CLIP-style mean/std, another resample filter) sets
``mean``, ``std`` and ``resample`` instead; the model's config carries them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
BICUBIC = int(Image.Resampling.BICUBIC)


def load_image(data: bytes | Image.Image | str | os.PathLike) -> Image.Image:
    """Decode image bytes or an image file (a path), or pass a PIL image through, as RGB."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image {str(data)!r}: no such file")
        img = Image.open(path)
    else:
        img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    return img.convert("RGB")


def _scaled(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([255 * float(v) for v in values], dtype=torch.float32).view(3, 1, 1)


# (x / 255 - mean) / std as (x - 255 mean) / (255 std): two in-place ops, exact at 0 and 255
_MEAN255 = _scaled(SIGLIP_MEAN)
_STD255 = _scaled(SIGLIP_STD)


def resized_pixels(img: bytes | Image.Image, size: int, resample: int = BICUBIC) -> np.ndarray:
    """One image -> uint8 array [size, size, 3]: decoded, RGB, resized; not normalised."""
    img = load_image(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling(resample))
    return np.array(img)


def normalise(pixels: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """uint8 [size, size, 3] -> float32 [3, size, size], normalised with ``mean``/``std`` (default SigLIP's)."""
    m = _MEAN255 if mean is None or tuple(mean) == SIGLIP_MEAN else _scaled(mean)
    s = _STD255 if std is None or tuple(std) == SIGLIP_STD else _scaled(std)
    t = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
    return t.sub_(m).div_(s)


def preprocess_image(img: bytes | Image.Image, size: int, mean=None, std=None, resample: int = BICUBIC) -> torch.Tensor:
    """One image -> float32 tensor [3, size, size], normalised."""
    return normalise(resized_pixels(img, size, resample), mean, std)


def preprocess_images(images: list[bytes | Image.Image], size: int, mean=None, std=None,
                      resample: int = BICUBIC) -> torch.Tensor:
    """A batch of images -> [B, 3, size, size]."""
    return torch.stack([preprocess_image(i, size, mean, std, resample) for i in images])
