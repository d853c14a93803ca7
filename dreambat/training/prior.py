"""DreamBooth prior preservation: make sure ``--class_data_dir`` holds ``--num_class_images`` images.

Missing class images are rendered by the base backbone (no LoRA) from ``--class_prompt``, on the
main process, before training; images already in the folder are reused. Image ``k`` of the folder
is rendered with a generator seeded by (seed, k), so a rerun that fills the same gap draws the same
pictures, and the training RNG is left as it was.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from .. import preemption
from ..backbone.load import load_text_to_image_pipeline
from ..files import save_image_atomically
from ..progress import progress

from ..data.class_images import list_class_images
from ..data.stream import mix_seed
from .config import TrainConfig

logger = logging.getLogger(__name__)

_CLASS_SEED_TAG = 101


@dataclass(frozen=True)
class ClassImageCounts:
    """How many class images the run found in the folder and how many it generated."""

    folder: Path
    existing: int
    generated: int

    @property
    def used(self) -> int:
        return self.existing + self.generated


def ensure_class_images(
    config: TrainConfig,
    accelerator: Accelerator,
    backbone_path: str | Path,
    *,
    resolution: int,
    dtype: torch.dtype = torch.float32,
) -> ClassImageCounts:
    """Generate the class images that ``config.class_data_dir`` lacks; call on every process.

    Returns the counts (the same on every process). Existing images beyond ``num_class_images``
    are left alone and not used.
    """
    folder = Path(config.class_data_dir)
    accelerator.wait_for_everyone()
    existing = min(len(list_class_images(folder)), config.num_class_images)
    missing = config.num_class_images - existing
    accelerator.wait_for_everyone()
    if missing > 0 and accelerator.is_main_process:
        logger.info("Generating %d class image(s) of '%s' into %s.", missing, config.class_prompt, folder)
        _generate(config, backbone_path, folder, range(existing, config.num_class_images),
                  resolution=resolution, device=accelerator.device, dtype=dtype)
    elif existing:
        logger.info("Reusing %d class image(s) from %s.", existing, folder)
    accelerator.wait_for_everyone()
    return ClassImageCounts(folder=folder, existing=existing, generated=max(0, missing))


def _generate(
    config: TrainConfig,
    backbone_path: str | Path,
    folder: Path,
    indices: range,
    *,
    resolution: int,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = load_text_to_image_pipeline(backbone_path, dtype=dtype, variant=config.variant,
                                           vae=config.pretrained_vae_model_name_or_path).to(device)
    pipeline.set_progress_bar_config(disable=True)
    seed = config.seed or 0
    batch_size = config.sample_batch_size
    with torch.random.fork_rng(devices=[]), progress(total=len(indices), desc="class images", unit="image") as bar:
        for first in range(indices.start, indices.stop, batch_size):
            batch = range(first, min(first + batch_size, indices.stop))
            generators = [torch.Generator().manual_seed(mix_seed(seed, _CLASS_SEED_TAG, k)) for k in batch]
            images = pipeline(
                [config.class_prompt] * len(batch), generator=generators, height=resolution, width=resolution,
                num_inference_steps=config.num_inference_steps,
            ).images
            for k, image in zip(batch, images):
                digest = hashlib.sha1(image.tobytes()).hexdigest()[:12]
                save_image_atomically(image, folder / f"{k:05d}-{digest}.jpg", quality=95)
            bar.update(len(batch))
            preemption.check(f"after {batch.stop} class images (they are in {folder}; a rerun generates the rest)")
    del pipeline
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
