"""What a training run settles before any model loads: inputs, resolution, accelerator."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch.utils.data import Dataset

from ..backbone.load import resolve_backbone
from ..config import TrainConfig
from ..data.class_images import list_class_images
from ..data.stream import check_gamma
from ..data.subject import list_subject_images
from ..errors import DataError
from ..launch import cpu_only
from .checkpoints import resolve_resume
from .loop import require_bitsandbytes

logger = logging.getLogger(__name__)


def check_inputs(config: TrainConfig) -> Path:
    """Fail fast, before any model loads; returns the backbone's local folder.

    Checks that the backbone resolves, the subject folder has images, ``--use_8bit_adam`` can be
    honoured, ``--class_data_dir`` is not a file and a named ``--resume_from_checkpoint`` exists.
    """
    backbone_path = resolve_backbone(config.pretrained_model_name_or_path, config.revision)
    list_subject_images(config.instance_data_dir)
    if config.use_8bit_adam:
        require_bitsandbytes()
    if config.with_prior_preservation:
        list_class_images(config.class_data_dir)
    if config.resume_from_checkpoint not in (None, "latest"):
        resolve_resume(config.output_dir, config.resume_from_checkpoint)
    return backbone_path


def check_mixture(backbone_data: Dataset | None, gamma: float, resolution: int) -> None:
    """Refuse a backbone share that cannot be honoured, and backbone images of the wrong size."""
    check_gamma(gamma, backbone_data)
    if backbone_data is None:
        return
    if gamma == 0:
        logger.warning("A backbone dataset was given with gamma 0: it is not used.")
        return
    shape = tuple(backbone_data[0]["pixel_values"].shape)
    if shape != (3, resolution, resolution):
        raise DataError(
            f"Backbone samples are {shape}, the training resolution is {resolution}: build the "
            f"backbone dataset at {resolution} px (see dreambat.training.setup.native_resolution)."
        )


def native_resolution(backbone_path: str | Path) -> int:
    """The backbone's native image size (UNet sample_size x VAE factor) from its configs only."""
    folder = Path(backbone_path)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def training_resolution(config: TrainConfig) -> int:
    """``--resolution``, or the backbone's native size when it is not set (no weights loaded)."""
    if config.resolution is not None:
        return config.resolution
    return native_resolution(resolve_backbone(config.pretrained_model_name_or_path, config.revision))


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The run's accelerator: CPU process group without a GPU, trackers under output_dir."""
    output_dir = Path(config.output_dir)
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(
        cpu=cpu_only(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
    )


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """dtype of the frozen weights under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
