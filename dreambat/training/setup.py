"""What a training run settles before any model loads: inputs, resolution, accelerator."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from torch.utils.data import Dataset

from ..data.class_images import list_class_images
from ..data.stream import check_gamma
from ..backbone.load import is_sdxl_folder
from ..errors import ConfigError, DataError
from ..inputs import ResolvedInputs, resolve_inputs
from ..launch import cpu_only
from .checkpoints import resolve_resume
from .config import TrainConfig
from .loop import require_bitsandbytes

logger = logging.getLogger(__name__)


def check_training_inputs(config: TrainConfig, resolved: ResolvedInputs | None = None) -> ResolvedInputs:
    """Fail fast, before any model loads; returns the resolved inputs (given or computed here).

    Checks that the backbone resolves (and, on SDXL, that no pivotal tuning is asked for),
    the subject folder has images, ``--use_8bit_adam`` can be
    honoured, ``--class_data_dir`` is not a file and a named ``--resume_from_checkpoint`` exists.
    """
    resolved = resolved or resolve_inputs(config)
    if config.train_text_encoder_ti and is_sdxl_folder(resolved.backbone_path):
        raise ConfigError(
            f"--train_text_encoder_ti is not supported on SDXL backbones yet ({resolved.backbone_path}): dreambat's "
            "pivotal tuning trains one text encoder's embeddings and SDXL has two. Use a rare-word identifier "
            "(with --train_text_encoder for LoRAs on both encoders), or an SD-1.x/2.x backbone."
        )
    if config.mixed_precision == "fp16" and cpu_only():
        logger.warning(
            "--mixed_precision fp16 on a machine without a GPU: CPUs have no fast fp16 kernels and fp16 "
            "training needs a gradient scaler that only runs on GPUs. Use --mixed_precision no, or bf16 on a CPU "
            "with native bf16 (AMX or AVX-512 BF16; elsewhere it runs emulated, about 40x slower than fp32 in "
            "BENCHMARKS.md)."
        )
    if config.use_8bit_adam:
        require_bitsandbytes()
    if config.with_prior_preservation:
        list_class_images(config.class_data_dir)
    if config.resume_from_checkpoint not in (None, "latest"):
        resolve_resume(config.output_dir, config.resume_from_checkpoint)
    return resolved


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
            f"backbone dataset at {resolution} px (see dreambat.inputs.resolve_inputs)."
        )


def make_accelerator(config: TrainConfig, *, find_unused_parameters: bool = False) -> Accelerator:
    """The run's accelerator: CPU process group without a GPU, trackers under output_dir.

    ``find_unused_parameters``: let DDP find trained parameters that get no gradient (SDXL's first
    text encoder: its last layer's LoRA, since SDXL reads the penultimate layer), as diffusers'
    SDXL script does; otherwise a multi-process run stops at its second step."""
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
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else None,
    )


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """dtype of the frozen weights under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
