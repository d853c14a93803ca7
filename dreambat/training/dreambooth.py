"""A complete DreamBooth-LoRA run: checks, load, train, save, validate, model card."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import cast_training_params
from torch.utils.data import DataLoader

from ..backbone.load import Backbone, load_backbone, resolve_backbone
from ..config import TrainConfig
from ..constants import RESOLVED_CONFIG_NAME
from ..data.subject import SubjectDataset, collate_subject, list_subject_images
from ..launch import cpu_only
from ..lora import add_text_encoder_lora, add_unet_lora, save_lora
from .loop import TrainState, total_train_steps, train_lora
from .model_card import write_model_card
from .validation import generate, log_images, pipeline_from_backbone, render_comparison

logger = logging.getLogger(__name__)

VALIDATION_GRID_NAME = "validation_grid.png"


@dataclass
class RunResult:
    """Where a run wrote its outputs, and how long each stage took (seconds)."""

    output_dir: Path
    lora_path: Path | None = None
    grid_path: Path | None = None
    model_card_path: Path | None = None
    state: TrainState | None = None
    timings: dict[str, float] = field(default_factory=dict)


def check_inputs(config: TrainConfig) -> Path:
    """Fail fast, before any model loads: the backbone resolves and the subject folder has images."""
    backbone_path = resolve_backbone(config.pretrained_model_name_or_path, config.revision)
    list_subject_images(config.instance_data_dir)
    return backbone_path


def make_accelerator(config: TrainConfig) -> Accelerator:
    output_dir = Path(config.output_dir)
    return Accelerator(
        cpu=cpu_only(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
    )


def _weight_dtype(accelerator: Accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def prepare_backbone(config: TrainConfig, accelerator: Accelerator) -> Backbone:
    """Load the frozen backbone on the accelerator's device and attach fresh LoRA adapters."""
    dtype = _weight_dtype(accelerator)
    backbone = load_backbone(
        config.pretrained_model_name_or_path, revision=config.revision, variant=config.variant, dtype=dtype
    )
    for model in (backbone.unet, backbone.vae, backbone.text_encoder):
        model.to(accelerator.device)
    add_unet_lora(backbone.unet, config.rank, dropout=config.lora_dropout)
    if config.train_text_encoder:
        add_text_encoder_lora(backbone.text_encoder, config.rank, dropout=config.lora_dropout)
    if dtype != torch.float32:
        # Frozen weights run in half precision; the trained LoRA weights stay in fp32.
        cast_training_params([backbone.unet, backbone.text_encoder], dtype=torch.float32)
    return backbone


def _tracker_config(config: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}


def run_dreambooth(config: TrainConfig) -> RunResult:
    """Train a DreamBooth LoRA on ``config.instance_data_dir`` and write every output.

    Writes to ``config.output_dir``: ``pytorch_lora_weights.safetensors``, ``dreambat_config.json``,
    ``validation_grid.png`` (base vs. LoRA, when a validation prompt is set), ``README.md`` and
    TensorBoard logs under ``logs/``.
    """
    backbone_path = check_inputs(config)
    accelerator = make_accelerator(config)
    result = RunResult(output_dir=Path(config.output_dir))
    if config.seed is not None:
        set_seed(config.seed)
    started = time.perf_counter()
    backbone = prepare_backbone(config, accelerator)
    if config.resolution is None:
        config = dataclasses.replace(config, resolution=backbone.native_resolution)
    dataset = SubjectDataset(
        config.instance_data_dir,
        config.instance_prompt,
        config.resolution,
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        seed=config.seed,
    )
    loader = DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        shuffle=True,
        collate_fn=collate_subject,
        num_workers=config.dataloader_num_workers,
        generator=torch.Generator().manual_seed(config.seed or 0),
    )
    num_steps = total_train_steps(config, len(loader))
    if accelerator.is_main_process:
        result.output_dir.mkdir(parents=True, exist_ok=True)
        config.save(result.output_dir / RESOLVED_CONFIG_NAME)
        accelerator.init_trackers("dreambat", config=_tracker_config(config))
    result.timings["load"] = time.perf_counter() - started
    logger.info(
        "Training a rank-%d LoRA on %d subject image(s) for %d steps at %d px.",
        config.rank, len(dataset), num_steps, config.resolution,
    )

    def validate(step: int) -> None:
        if not (config.validation_steps and step % config.validation_steps == 0 and step < num_steps):
            return
        if accelerator.is_main_process:
            unet = accelerator.unwrap_model(backbone.unet)
            pipeline = pipeline_from_backbone(backbone, unet=unet)
            pipeline.set_progress_bar_config(disable=True)
            images = generate(
                pipeline, config.validation_prompt, config.num_validation_images,
                seed=config.seed or 0, num_inference_steps=config.num_inference_steps,
                resolution=config.resolution,
            )
            log_images(accelerator, "validation", images, step)

    started = time.perf_counter()
    result.state = train_lora(config, backbone, loader, accelerator, num_steps=num_steps, on_step=validate)
    result.timings["train"] = time.perf_counter() - started
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        started = time.perf_counter()
        unet = accelerator.unwrap_model(backbone.unet)
        text_encoder = accelerator.unwrap_model(backbone.text_encoder) if config.train_text_encoder else None
        result.lora_path = save_lora(result.output_dir, unet, text_encoder)
        if config.validation_prompt:
            grid, rows = render_comparison(
                backbone_path, result.output_dir, [config.validation_prompt], config.num_validation_images,
                seed=config.seed or 0, num_inference_steps=config.num_inference_steps,
                resolution=config.resolution, device=accelerator.device,
            )
            result.grid_path = result.output_dir / VALIDATION_GRID_NAME
            grid.save(result.grid_path)
            log_images(accelerator, "final/lora", rows[1], num_steps)
        result.model_card_path = write_model_card(
            result.output_dir, config, num_subject_images=len(dataset), train_steps=num_steps,
            final_loss=result.state.losses[-1] if result.state.losses else None,
            grid_name=VALIDATION_GRID_NAME if result.grid_path else None,
        )
        result.timings["save_and_validate"] = time.perf_counter() - started
    accelerator.end_training()
    return result
