"""The subject (instance) photos: folder listing, loading and the training dataset."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from torch.utils.data import Dataset, get_worker_info

from dreambat.constants import IMAGE_EXTENSIONS
from dreambat.data.transforms import ImageTransform, load_rgb
from dreambat.errors import ConfigError, SubjectDataError

__all__ = ["SubjectDataset", "SubjectExample", "collate_subject", "list_subject_images"]

logger = logging.getLogger(__name__)

# What PIL raises for a file it cannot decode: not an image, truncated, corrupt, oversized.
_UNREADABLE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, PIL.Image.DecompressionBombError)
_MAX_NAMES_SHOWN = 10
_ACCEPTED = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))


def list_subject_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by file name.

    An entry counts if it is a file whose extension is in ``IMAGE_EXTENSIONS`` (any case) and
    whose name does not start with a dot, which drops macOS ``.DS_Store`` and ``._photo.jpg``
    AppleDouble files. Subfolders are not searched.

    Raises:
        SubjectDataError: ``folder`` does not exist, is not a folder, or holds no image file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise SubjectDataError(
            f"Subject image folder '{folder}' does not exist. Pass --instance_data_dir pointing "
            f"to a folder of 3–10 photos ({_ACCEPTED.replace(', ', '/')})."
        )
    if not folder.is_dir():
        raise SubjectDataError(
            f"Subject image path '{folder}' is a file, not a folder. Pass --instance_data_dir "
            "pointing to the folder that holds the 3–10 subject photos, not to a single file."
        )
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    images = [p for p in entries if _is_subject_image(p)]
    if not images:
        raise SubjectDataError(
            f"Subject image folder '{folder}' holds no image file with an accepted extension "
            f"({_ACCEPTED}, any case; hidden files are ignored); {_describe_entries(entries)}. "
            "Put 3–10 photos of the subject directly in it, or pass --instance_data_dir "
            "pointing to the folder that holds them."
        )
    return images


def readable_subject_images(folder: str | Path) -> list[Path]:
    """The subject photos that decode, after one warning naming those that do not.

    Raises:
        SubjectDataError: no image file, or none of them readable (see :func:`list_subject_images`).
    """
    readable, skipped = [], []
    for path in list_subject_images(folder):
        try:
            load_rgb(path)
        except _UNREADABLE_ERRORS as error:
            skipped.append((path, f"{type(error).__name__}: {error}"))
        else:
            readable.append(path)
    _report_unreadable(Path(folder), readable, skipped)
    return readable


def _report_unreadable(folder: Path, readable: list, skipped: list[tuple[Path, str]]) -> None:
    if not skipped:
        return
    listing = "; ".join(f"{path.name} ({reason})" for path, reason in skipped)
    if not readable:
        raise SubjectDataError(
            f"None of the {len(skipped)} image files in subject folder '{folder}' "
            f"could be read: {listing}. Replace them with valid photos ({_ACCEPTED})."
        )
    logger.warning(
        "Skipped %d unreadable image file(s) in subject folder '%s', training on the other %d: %s",
        len(skipped), folder, len(readable), listing,
    )


def _is_subject_image(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
    )


def _describe_entries(entries: list[Path]) -> str:
    """E.g. ``found 2 other files: .DS_Store, notes.txt`` or ``it is empty``."""
    if not entries:
        return "it is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    if len(names) > _MAX_NAMES_SHOWN:
        shown += f", … and {len(names) - _MAX_NAMES_SHOWN} more"
    noun = "entry" if len(names) == 1 else "entries"
    hint = " (subfolders are not searched)" if any(p.is_dir() for p in entries) else ""
    return f"found {len(names)} other {noun}: {shown}{hint}"


@dataclass(frozen=True)
class SubjectExample:
    """One decoded subject photo (upright RGB, full size) and the prompt it is trained on."""

    path: Path
    image: PIL.Image.Image
    prompt: str


class SubjectDataset(Dataset):
    """The subject photos of a folder, decoded once, preprocessed on each access.

    Items are dicts ``{"pixel_values": float32 [3, resolution, resolution] in [-1, 1],
    "prompt": str, "key": str, "original_size": (h, w)}`` (the photo's size before resizing, which
    SDXL is conditioned on). ``key`` is the file stem (the full file name when two files
    share a stem, e.g. ``dog.jpg`` and ``dog.png``): a stable id, unique within the dataset, that
    later seeds the per-sample noise.

    Unreadable files are skipped with one logged warning and listed in ``skipped`` as
    ``(path, reason)``.

    Randomness (random crop, flip): in the main process it comes from one ``torch.Generator``
    seeded by ``seed`` and held by the dataset, so the sequence of items is reproducible for a
    given access order; ``seed=None`` uses torch's global RNG. Inside ``DataLoader`` workers
    (``num_workers > 0``) the dataset is a per-worker copy, so a held generator would repeat the
    same stream in every worker and every epoch; there the worker's own global RNG is used
    instead, which ``DataLoader`` seeds per worker and per epoch (reproducible when the loader's
    generator or torch's global seed is fixed).

    Args:
        folder: folder of 3–10 subject photos (see `list_subject_images`), or the photo files
            already listed (``ResolvedInputs.subject_images``).
        instance_prompt: prompt naming the subject, e.g. ``"a photo of sks dog"``.
        resolution: side of the square training images.
        center_crop: crop the centre instead of a random window.
        random_flip: flip horizontally with probability 0.5.
        seed: seed of the crop/flip generator.

    Raises:
        ConfigError: empty ``instance_prompt`` or bad ``resolution``.
        SubjectDataError: missing folder, no image files, or none of them readable.
    """

    def __init__(
        self,
        folder: str | Path | Sequence[Path],
        instance_prompt: str,
        resolution: int,
        *,
        center_crop: bool = False,
        random_flip: bool = False,
        seed: int | None = None,
    ):
        if not isinstance(instance_prompt, str) or not instance_prompt.strip():
            raise ConfigError(
                f"The instance prompt is empty ({instance_prompt!r}). Pass --instance_prompt "
                "with a prompt naming the subject, e.g. --instance_prompt 'a photo of sks dog'."
            )
        if isinstance(folder, (str, Path)):
            self.folder = Path(folder)
            paths = list_subject_images(self.folder)
        else:
            paths = [Path(p) for p in folder]
            self.folder = paths[0].parent
        self.instance_prompt = instance_prompt
        self.transform = ImageTransform(
            resolution, center_crop=center_crop, random_flip=random_flip
        )
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

        self.images: list[SubjectExample] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in paths:
            try:
                image = load_rgb(path)
            except _UNREADABLE_ERRORS as error:
                self.skipped.append((path, f"{type(error).__name__}: {error}"))
                continue
            self.images.append(SubjectExample(path=path, image=image, prompt=instance_prompt))
        self._report_skipped()
        self.keys: list[str] = _unique_keys([example.path for example in self.images])

    def _report_skipped(self) -> None:
        _report_unreadable(self.folder, self.images, self.skipped)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.getitem(index, self._rng())

    def getitem(self, index: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Item ``index`` with its crop and flip drawn from ``generator`` (``None``: torch's
        global RNG). `~dreambat.data.stream.TrainingStream` calls this with a per-slot generator."""
        example = self.images[index]
        return {
            "pixel_values": self.transform(example.image, generator),
            "prompt": example.prompt,
            "key": self.keys[index],
            "original_size": (example.image.height, example.image.width),
        }

    def _rng(self) -> torch.Generator | None:
        return None if get_worker_info() is not None else self._generator


def _unique_keys(paths: list[Path]) -> list[str]:
    """File stems, falling back to the full file name for stems shared by several files."""
    stems = [path.stem for path in paths]
    return [path.name if stems.count(path.stem) > 1 else path.stem for path in paths]


def collate_subject(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack `SubjectDataset` items into ``{"pixel_values": [B, 3, H, W], "prompts": [B],
    "keys": [B], "original_sizes": [B] of (height, width)}``."""
    if not batch:
        raise ValueError("collate_subject got an empty batch; the DataLoader yielded no items.")
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "prompts": [item["prompt"] for item in batch],
        "keys": [item["key"] for item in batch],
        "original_sizes": [tuple(item["original_size"]) for item in batch],
    }
