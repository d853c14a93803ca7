"""The selected backbone candidates as training examples for the γ-mixture of stage 5."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from ..albat import ManifestRecord
from ..data.records import record_caption, record_url
from ..data.shards import ShardReader
from ..data.transforms import ImageTransform, original_size
from ..errors import DataError

logger = logging.getLogger(__name__)


class SelectedBackboneDataset(Dataset):
    """The manifest's selected candidates, read once from their shards and kept in memory.

    Each item is ``{"pixel_values": Tensor[3, R, R] in [-1, 1], "prompt": str, "key": str,
    "original_size": (h, w)}``: the candidate's image centre-cropped to ``resolution``, its own
    caption, and its size before any resizing (:func:`~dreambat.data.transforms.original_size`). Backbone images
    are always centre-cropped and never flipped, so the final training sees the same view of a
    candidate that ALBAT scored (and a caption that says "on the left" stays true). Images are
    stored already resized (shorter side = ``resolution``), so memory is about
    ``3·R²`` bytes per selected candidate.

    Args:
        records: manifest records; only those with ``selected`` true are read.
        resolution: training resolution in pixels.

    Raises:
        DataError: a selected candidate is missing from its shard (the shards changed since
            scoring) or unreadable now.
    """

    def __init__(self, records: Sequence[ManifestRecord], resolution: int) -> None:
        wanted = {(record_url(r), r.key): r for r in records if r.selected}
        self.transform = ImageTransform(resolution, center_crop=True)
        self.resolution = resolution
        found: dict[tuple[str, str], PIL.Image.Image] = {}
        sizes: dict[tuple[str, str], tuple[int, int]] = {}
        urls = list(dict.fromkeys(record_url(r) for r in wanted.values()))
        if urls:
            for sample in ShardReader(urls, min_image_size=0):  # the pool's checks ran when it was scored
                if (sample.url, sample.key) in wanted and (sample.url, sample.key) not in found:
                    found[(sample.url, sample.key)] = _shrink(sample.image, resolution)
                    sizes[(sample.url, sample.key)] = original_size(sample.image, sample.metadata)
        missing = [key for key in wanted if key not in found]
        if missing:
            shown = ", ".join(f"{key} in {url}" for url, key in missing[:5])
            raise DataError(
                f"{len(missing)} selected backbone candidate(s) are no longer readable from their "
                f"shards ({shown}{', ...' if len(missing) > 5 else ''}). The shards changed since "
                "scoring: restore them, or score again with a new --output_dir."
            )
        ordered = sorted(wanted.values(), key=lambda r: r.index)
        self.keys = [r.key for r in ordered]
        self.captions = [record_caption(r) for r in ordered]
        self.indices = [r.index for r in ordered]
        self.images = [found[(record_url(r), r.key)] for r in ordered]
        self.original_sizes = [sizes[(record_url(r), r.key)] for r in ordered]
        logger.info("Loaded %d selected backbone image(s) from %d shard(s).", len(self.images), len(urls))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "pixel_values": self.transform(self.images[index]),
            "prompt": self.captions[index],
            "key": self.keys[index],
            "original_size": self.original_sizes[index],
        }


def _shrink(image: PIL.Image.Image, resolution: int) -> PIL.Image.Image:
    """Resize so the shorter side is ``resolution`` (as the transform would), to keep memory low."""
    if min(image.size) <= resolution:
        return image
    pixels = TF.resize(TF.pil_to_tensor(image), [resolution], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.to_pil_image(pixels.to(torch.uint8))
