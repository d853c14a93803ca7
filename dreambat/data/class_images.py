"""Class images for DreamBooth prior preservation: a folder of backbone-generated pictures.

Unlike the handful of subject photos, there may be hundreds of class images, so they are decoded
on access rather than held in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..constants import IMAGE_EXTENSIONS
from ..errors import ConfigError, DataError
from .transforms import ImageTransform, load_rgb

__all__ = ["ClassImageDataset", "list_class_images"]


def list_class_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; ``[]`` when it does not exist yet.

    Raises:
        ConfigError: ``folder`` exists but is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise ConfigError(
            f"--class_data_dir '{folder}' is a file; pass a folder (it is created when missing)."
        )
    return sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )


class ClassImageDataset(Dataset):
    """The first ``limit`` class images of a folder (by name), all trained on ``class_prompt``.

    Items are ``{"pixel_values": float32 [3, resolution, resolution] in [-1, 1], "prompt": str,
    "key": str, "original_size": (h, w)}``, preprocessed like the subject photos (`ImageTransform`).

    Raises:
        DataError: the folder holds no class image.
    """

    def __init__(
        self,
        folder: str | Path,
        class_prompt: str,
        resolution: int,
        *,
        limit: int | None = None,
        center_crop: bool = False,
        random_flip: bool = False,
    ):
        self.folder = Path(folder)
        self.class_prompt = class_prompt
        self.paths = list_class_images(self.folder)[:limit]
        if not self.paths:
            raise DataError(
                f"Class image folder '{self.folder}' holds no image; generate them first "
                "(dreambat does so before training when --with_prior_preservation is set)."
            )
        self.transform = ImageTransform(resolution, center_crop=center_crop, random_flip=random_flip)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.getitem(index)

    def getitem(self, index: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Item ``index``, its crop and flip drawn from ``generator`` (``None``: global RNG)."""
        path = self.paths[index]
        try:
            image = load_rgb(path)
        except (OSError, ValueError, EOFError, SyntaxError) as error:
            raise DataError(
                f"Class image '{path}' cannot be read ({type(error).__name__}: {error}); delete it "
                "and rerun: missing class images are generated again."
            ) from error
        return {"pixel_values": self.transform(image, generator), "prompt": self.class_prompt, "key": path.stem,
                "original_size": (image.height, image.width)}
