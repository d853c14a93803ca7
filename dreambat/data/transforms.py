"""Image loading and the DreamBooth preprocessing shared by subject and backbone images.

`ImageTransform` reproduces diffusers' DreamBooth pipeline (``Resize`` of the shorter side,
``CenterCrop``/``RandomCrop``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize([0.5], [0.5])``)
on tensors, drawing its randomness from an optional ``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

from os import PathLike
from typing import IO

import PIL.Image
import PIL.ImageOps
import torch
import torchvision.transforms.v2.functional as TF

from dreambat.errors import ConfigError

__all__ = ["ImageTransform", "load_rgb", "original_size", "to_rgb"]

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def load_rgb(path_or_file: str | PathLike[str] | IO[bytes]) -> PIL.Image.Image:
    """Open an image, decode it fully and return it upright in RGB (see `to_rgb`).

    Decoding happens here, not lazily later, so corrupt or truncated files fail at load time.
    A file object passed in is left open.

    Raises:
        OSError: (including ``PIL.UnidentifiedImageError``) if the file is missing, not an image,
            or truncated; PIL may also raise ``ValueError`` or ``DecompressionBombError``.
    """
    with PIL.Image.open(path_or_file) as image:
        image.load()
        return to_rgb(image)


def original_size(image: PIL.Image.Image, metadata: dict | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image before any resizing: img2dataset's ``original_height`` /
    ``original_width`` where its metadata records them (it resizes when it downloads), else the
    decoded image's own size. SDXL is conditioned on it (its "original size" time ids)."""
    metadata = metadata or {}
    height, width = metadata.get("original_height"), metadata.get("original_width")
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return image.height, image.width


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Apply the EXIF orientation and convert to 8-bit RGB; always returns a new image.

    Transparent pixels (RGBA, LA, palette with transparency) are composited on white, as a
    viewer shows them, rather than dropped to the black that ``convert("RGB")`` leaves.
    16-bit and float greyscale is rescaled to 8 bit rather than clipped.
    """
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _to_8bit_grey(image)
    if image.mode in _ALPHA_MODES or (image.mode in ("P", "L") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit_grey(image: PIL.Image.Image) -> PIL.Image.Image:
    """Map an ``I``/``I;16``/``F`` image to ``L``, scaling 16-bit ranges down by 257."""
    image = image.convert("F")
    _, high = image.getextrema()
    if high > 255:
        image = image.point(lambda v: v / 257.0)
    return image.convert("L")


class ImageTransform:
    """DreamBooth preprocessing: PIL image -> float32 tensor ``[3, resolution, resolution]``.

    Steps: resize the shorter side to ``resolution`` (bilinear, antialiased), centre or random
    crop to a square, optional horizontal flip with probability 0.5, scale to ``[-1, 1]``.

    Args:
        resolution: side of the square output, in pixels.
        center_crop: crop the centre instead of a random window.
        random_flip: flip horizontally with probability 0.5.
    """

    def __init__(self, resolution: int, *, center_crop: bool = False, random_flip: bool = False):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
            raise ConfigError(
                f"resolution must be a positive integer number of pixels, got {resolution!r}. "
                "Pass e.g. --resolution 512."
            )
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resolution={self.resolution}, "
            f"center_crop={self.center_crop}, random_flip={self.random_flip})"
        )

    def __call__(
        self, image: PIL.Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Preprocess one image.

        Args:
            image: any PIL image; non-RGB images go through `to_rgb` first.
            generator: source of the crop offsets and the flip; ``None`` uses torch's global RNG.
                A random crop draws two numbers and a flip one, whatever the image size, so
                the stream stays aligned across images.

        Returns:
            float32 tensor ``[3, resolution, resolution]`` with values in ``[-1, 1]``.
        """
        if image.mode != "RGB":
            image = to_rgb(image)
        pixels = TF.pil_to_tensor(image)  # uint8 [3, H, W]
        pixels = TF.resize(
            pixels,
            [self.resolution],
            interpolation=TF.InterpolationMode.BILINEAR,
            antialias=True,
        )
        pixels = self._crop(pixels, generator)
        if self.random_flip and torch.rand((), generator=generator).item() < 0.5:
            pixels = TF.horizontal_flip(pixels)
        return pixels.to(torch.float32).div_(127.5).sub_(1.0)

    def _crop(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Square crop of side ``resolution`` from ``pixels`` ``[3, H, W]`` (H, W >= resolution)."""
        size = self.resolution
        if self.center_crop:
            return TF.center_crop(pixels, [size, size])
        height, width = pixels.shape[-2:]
        top = int(torch.randint(0, height - size + 1, (), generator=generator))
        left = int(torch.randint(0, width - size + 1, (), generator=generator))
        return TF.crop(pixels, top, left, size, size)
