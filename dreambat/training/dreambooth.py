"""A complete DreamBooth-LoRA run: checks, class images, load, train, checkpoint, save, validate.

:func:`run_dreambooth` is the one training entry point: plain DreamBooth-LoRA, the ALBAT
surrogate (stage 2) and the final BAT training on a subject/backbone mixture (stage 5) all go
through it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import cast_training_params
from torch.utils.data import Dataset

from ..backbone.load import Backbone, is_sdxl_folder, load_backbone
from ..constants import RESOLVED_CONFIG_NAME, VALIDATION_GRID_NAME
from ..data.class_images import ClassImageDataset
from ..data.stream import TrainingStream
from ..data.subject import SubjectDataset
from ..files import atomic_write_text
from ..inputs import ResolvedInputs
from ..timing import Timer
from ..lora import add_text_encoder_lora, add_unet_lora, save_lora
from ..pivotal import PivotalEmbedding, expand_prompts
from .checkpoints import check_stream_state, resolve_resume, save_checkpoint
from .config import TrainConfig
from .loop import (
    TrainState,
    micro_batches_per_epoch,
    steps_per_epoch,
    total_train_steps,
    train_lora,
)
from .model_card import write_model_card
from .prior import ClassImageCounts, ensure_class_images
from .setup import check_training_inputs, check_mixture, make_accelerator, weight_dtype
from .validation import log_images, render_comparison, sample_during_training

__all__ = ["RunResult", "prepare_backbone", "run_dreambooth"]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a run wrote its outputs, what it trained on, and how long each stage took (seconds).

    ``source_counts`` counts the training rows of the whole run (all processes, all optimiser
    steps including those before a resume) by source: ``subject``, ``backbone``, ``class``.
    """

    output_dir: Path
    lora_path: Path | None = None
    embeddings_path: Path | None = None
    grid_path: Path | None = None
    model_card_path: Path | None = None
    state: TrainState | None = None
    timings: dict[str, float] = field(default_factory=dict)
    source_counts: dict[str, int] = field(default_factory=dict)
    resumed_from: str | None = None
    class_images: ClassImageCounts | None = None


def prepare_backbone(config: TrainConfig, accelerator: Accelerator, backbone_path: Path | None = None
                     ) -> tuple[Backbone, PivotalEmbedding | None]:
    """Load the frozen backbone on the accelerator's device and attach fresh LoRA adapters.

    Returns the backbone and, with ``--train_text_encoder_ti``, the new tokens' trainable
    embeddings (added to its tokenizer and hooked into its text encoder)."""
    dtype = weight_dtype(accelerator)
    backbone = load_backbone(
        str(backbone_path or config.pretrained_model_name_or_path), revision=config.revision,
        variant=config.variant, dtype=dtype, vae=config.pretrained_vae_model_name_or_path,
    )
    backbone.to(accelerator.device)
    add_unet_lora(backbone.unet, config.rank, dropout=config.lora_dropout)
    if config.train_text_encoder:  # both of SDXL's, as diffusers' SDXL script does
        for text_encoder in backbone.text_encoders:
            add_text_encoder_lora(text_encoder, config.rank, dropout=config.lora_dropout)
    pivotal = None
    if config.new_tokens is not None:
        generator = torch.Generator().manual_seed(config.seed or 0)
        pivotal = PivotalEmbedding(backbone.tokenizer, backbone.text_encoder, config.new_tokens,
                                   initializer=config.initializer_concept, generator=generator)
        pivotal.to(accelerator.device)
    if dtype != torch.float32:
        # Frozen weights run in half precision; the trained LoRA weights stay in fp32.
        cast_training_params([backbone.unet, *backbone.text_encoders], dtype=torch.float32)
    return backbone, pivotal


def _tracker_config(config: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}


def _stream_state(config: TrainConfig, accelerator: Accelerator, gamma: float) -> dict:
    """The settings that define the batch stream; a resume with others cannot match."""
    return {
        "seed": config.seed, "train_batch_size": config.train_batch_size, "gamma": gamma,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_processes": accelerator.num_processes, "with_prior_preservation": config.with_prior_preservation,
    }


def run_dreambooth(
    config: TrainConfig,
    *,
    resolved: ResolvedInputs | None = None,
    backbone_data: Dataset | None = None,
    gamma: float = 0.0,
    description: str = "train",
    model_card_sections: Mapping[str, str] | None = None,
    resolved_config: Mapping[str, Any] | None = None,
) -> RunResult:
    """Train a DreamBooth LoRA on ``config.instance_data_dir`` (optionally mixed) and write every output.

    Args:
        config: the run; ``resolution=None`` means the backbone's native size.
        resolved: what :func:`~dreambat.training.setup.check_training_inputs` returned for these
            inputs, when the caller has already checked them (they are then not checked again).
        backbone_data: selected backbone samples, items ``{"pixel_values": [3,R,R] in [-1,1],
            "prompt": str, "key": str}`` at the training resolution (``resolved.resolution``).
        gamma: expected share of backbone rows in the instance part of each batch, in ``[0, 1)``.
        description: progress-bar label and TensorBoard tag prefix (e.g. ``"surrogate"``).
        model_card_sections: extra model-card sections, heading -> markdown.
        resolved_config: what to write as ``dreambat_config.json`` when the caller's settings
            are wider than ``config`` (a BAT run writes its training and BAT settings together).

    Writes to ``config.output_dir``: ``pytorch_lora_weights.safetensors`` (text-encoder LoRA
    included when trained), ``dreambat_config.json``, ``checkpoint-N/`` every
    ``--checkpointing_steps``, ``validation_grid.png`` (base vs. LoRA, when a validation prompt
    is set), ``README.md`` and TensorBoard logs under ``logs/``. Class images are generated into
    ``--class_data_dir`` first when prior preservation is on.

    Every check that needs no model (paths, flags, backbone share, backbone image size, resume
    target) runs before anything is loaded.
    """
    result = RunResult(output_dir=Path(config.output_dir))
    timer = Timer()
    with timer("load"):
        if resolved is None:  # a caller that passes ``resolved`` has checked the inputs already
            resolved = check_training_inputs(config)
        backbone_path = resolved.backbone_path
        config = dataclasses.replace(config, resolution=resolved.resolution)
        check_mixture(backbone_data, gamma, config.resolution)
        (instance_prompt,) = expand_prompts([config.instance_prompt], config.new_tokens)
        subject = SubjectDataset(
            resolved.subject_images, instance_prompt, config.resolution,
            center_crop=config.center_crop, random_flip=config.random_flip, seed=config.seed,
        )
        accelerator = make_accelerator(
            config, find_unused_parameters=config.train_text_encoder and is_sdxl_folder(backbone_path))
        resume = resolve_resume(result.output_dir, config.resume_from_checkpoint)
        result.resumed_from = str(resume) if resume is not None else None
        micro_per_epoch = micro_batches_per_epoch(len(subject), config.train_batch_size)
        num_steps = total_train_steps(config, micro_per_epoch)

    class_images = None
    if config.with_prior_preservation:
        with timer("class_images"):
            result.class_images = ensure_class_images(
                config, accelerator, backbone_path, resolution=config.resolution, dtype=weight_dtype(accelerator)
            )
            class_images = ClassImageDataset(
                config.class_data_dir, config.class_prompt, config.resolution, limit=config.num_class_images,
                center_crop=config.center_crop, random_flip=config.random_flip,
            )

    with timer("load"):
        if config.seed is not None:
            set_seed(config.seed, device_specific=True)
        backbone, pivotal = prepare_backbone(config, accelerator, backbone_path)
        stream = TrainingStream(
            subject, batch_size=config.train_batch_size, seed=config.seed or 0,
            process_index=accelerator.process_index, num_processes=accelerator.num_processes,
            backbone=backbone_data, gamma=gamma, class_images=class_images,
        )
        stream_state = _stream_state(config, accelerator, gamma)
        if resume is not None:
            check_stream_state(resume, stream_state)
        if accelerator.is_main_process:
            result.output_dir.mkdir(parents=True, exist_ok=True)
            if resolved_config is None:
                config.save(result.output_dir / RESOLVED_CONFIG_NAME)
            else:
                atomic_write_text(result.output_dir / RESOLVED_CONFIG_NAME,
                                  json.dumps(resolved_config, indent=2, sort_keys=True) + "\n")
            accelerator.init_trackers("dreambat", config=_tracker_config(config))
    logger.info(
        "Training a rank-%d LoRA on %d subject image(s)%s%s for %d steps at %d px%s.",
        config.rank, len(subject),
        f" + backbone samples (share {gamma:.2f}) of {len(backbone_data)}" if stream.backbone is not None else "",
        f" + {len(class_images)} class images" if class_images is not None else "",
        num_steps, config.resolution, f", resuming from {resume.name}" if resume is not None else "",
    )

    validation_every = _validation_interval(config, steps_per_epoch(config, micro_per_epoch))

    def on_step(step: int) -> None:
        if validation_every and step % validation_every == 0 and step < num_steps and accelerator.is_main_process:
            unet = accelerator.unwrap_model(backbone.unet)
            text_encoder = backbone.text_encoder if config.train_text_encoder else None
            text_encoder_2 = backbone.text_encoder_2 if config.train_text_encoder else None
            images = sample_during_training(
                backbone, expand_prompts([config.validation_prompt], config.new_tokens)[0],
                config.num_validation_images, unet=unet,
                text_encoder=text_encoder, text_encoder_2=text_encoder_2, seed=config.seed or 0,
                num_inference_steps=config.num_inference_steps, resolution=config.resolution,
            )
            log_images(accelerator, f"{description}/validation", images, step)
            logger.info("%s: validation at step %d, %d image(s) of %r (TensorBoard: %s/validation).",
                        description, step, len(images), config.validation_prompt, description)
        if step % config.checkpointing_steps == 0:
            checkpoint(step)

    saved: dict[int, Path] = {}

    def checkpoint(step: int) -> Path:
        """``checkpoint-{step}``, saved once (a stop right after a periodic save reuses it)."""
        if step not in saved:
            saved[step] = save_checkpoint(accelerator, result.output_dir, step,
                                          total_limit=config.checkpoints_total_limit,
                                          stream_state={**stream_state, "global_step": step}, pivotal=pivotal)
        return saved[step]

    with timer("train"):
        result.state = train_lora(
            config, backbone, lambda start: stream.iterate(start, num_workers=config.dataloader_num_workers),
            accelerator, num_steps=num_steps, description=description, on_step=on_step, on_stop=checkpoint,
            resume_from=resume, pivotal=pivotal,
        )
    accelerator.wait_for_everyone()
    counts = stream.count_sources(num_steps * config.gradient_accumulation_steps, all_processes=True)
    result.source_counts = {name: int(n) for name, n in sorted(counts.items())}
    losses = result.state.losses
    if losses:
        tail = losses[-10:]
        logger.info(
            "%s: %d steps in %.1fs, loss %.4f -> %.4f (mean of the last %d); samples drawn: %s.",
            description, len(losses), timer.seconds["train"], losses[0], sum(tail) / len(tail), len(tail),
            ", ".join(f"{n} {name}" for name, n in result.source_counts.items() if n),
        )

    if accelerator.is_main_process:
        with timer("save_and_validate"):
            _save_outputs(config, accelerator, backbone, backbone_path, result, len(subject), num_steps,
                          description, model_card_sections, pivotal)
    result.timings = timer.seconds
    accelerator.wait_for_everyone()
    # Not accelerator.end_training(): it destroys the process group, and a BAT run trains twice
    # (surrogate, final LoRA) and scores in between within the same launch.
    for tracker in accelerator.trackers:
        tracker.finish()
    return result


def _validation_interval(config: TrainConfig, steps_in_epoch: int) -> int | None:
    """Optimiser steps between validations: ``--validation_steps``, else ``--validation_epochs``."""
    if config.validation_steps:
        return config.validation_steps
    if config.validation_epochs:
        return config.validation_epochs * steps_in_epoch
    return None


def _save_outputs(
    config: TrainConfig,
    accelerator: Accelerator,
    backbone: Backbone,
    backbone_path: Path,
    result: RunResult,
    num_subject_images: int,
    num_steps: int,
    description: str,
    model_card_sections: Mapping[str, str] | None,
    pivotal: PivotalEmbedding | None = None,
) -> None:
    """Main process: LoRA weights (and new-token embeddings), base-vs-LoRA grid read back from the
    saved files, model card."""
    unet = accelerator.unwrap_model(backbone.unet)
    text_encoders = [accelerator.unwrap_model(m) for m in backbone.text_encoders] if config.train_text_encoder else []
    result.lora_path = save_lora(result.output_dir, unet, *text_encoders)
    logger.info("%s: saved the LoRA weights to %s.", description, result.lora_path)
    if pivotal is not None:
        result.embeddings_path = pivotal.save(result.output_dir)
        logger.info("%s: saved the embeddings of %s (for %r) to %s.", description, pivotal.new.text,
                    pivotal.new.abstraction, result.embeddings_path)
    if config.validation_prompt:
        grid, rows = render_comparison(
            backbone_path, result.output_dir, [config.validation_prompt], config.num_validation_images,
            seed=config.seed or 0, num_inference_steps=config.num_inference_steps,
            resolution=config.resolution, device=accelerator.device,
        )
        result.grid_path = result.output_dir / VALIDATION_GRID_NAME
        grid.save(result.grid_path)
        logger.info("%s: base model vs LoRA on the validation prompt: %s.", description, result.grid_path)
        log_images(accelerator, f"{description}/final_lora", rows[1], num_steps)
    losses = result.state.losses if result.state else []
    result.model_card_path = write_model_card(
        result.output_dir, config, num_subject_images=num_subject_images, train_steps=num_steps,
        final_loss=losses[-1] if losses else None,
        grid_name=VALIDATION_GRID_NAME if result.grid_path else None,
        source_counts=result.source_counts,
        num_class_images=result.class_images.used if result.class_images else None,
        resumed_from=result.resumed_from, extra_sections=model_card_sections,
        pipeline_class="StableDiffusionXLPipeline" if backbone.is_sdxl else "StableDiffusionPipeline",
    )
