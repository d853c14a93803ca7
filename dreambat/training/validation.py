"""Validation samples: render prompts with the LoRA being trained, or with saved LoRA weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from ..backbone.load import Backbone, load_text_to_image_pipeline
from ..image_grid import image_grid
from ..pivotal import expand_prompts, load_new_tokens


def pipeline_from_backbone(backbone: Backbone, unet=None, text_encoder=None, text_encoder_2=None
                           ) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A sampling pipeline sharing ``backbone``'s modules (optionally swapped for trained ones).

    The scheduler is a copy: sampling sets its inference timesteps, which must not leak into
    the training noise scheduler.
    """
    scheduler = type(backbone.noise_scheduler).from_config(backbone.noise_scheduler.config)
    if backbone.is_sdxl:
        return StableDiffusionXLPipeline(
            vae=backbone.vae, text_encoder=text_encoder if text_encoder is not None else backbone.text_encoder,
            text_encoder_2=text_encoder_2 if text_encoder_2 is not None else backbone.text_encoder_2,
            tokenizer=backbone.tokenizer, tokenizer_2=backbone.tokenizer_2,
            unet=unet if unet is not None else backbone.unet, scheduler=scheduler, add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=backbone.vae,
        text_encoder=text_encoder if text_encoder is not None else backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=unet if unet is not None else backbone.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def generate(
    pipeline: StableDiffusionPipeline,
    prompt: str,
    num_images: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 25,
    resolution: int | None = None,
) -> list[Image.Image]:
    """``num_images`` images of ``prompt``; image i uses seed ``seed + i`` (comparable across models)."""
    images = []
    for i in range(num_images):
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        output = pipeline(
            prompt,
            num_inference_steps=num_inference_steps,
            generator=generator,
            height=resolution,
            width=resolution,
            output_type="pil",
        )
        images.append(output.images[0])
    return images


@torch.no_grad()
def sample_during_training(
    backbone: Backbone,
    prompt: str,
    num_images: int,
    *,
    unet,
    text_encoder=None,
    text_encoder_2=None,
    seed: int = 0,
    num_inference_steps: int = 25,
    resolution: int | None = None,
) -> list[Image.Image]:
    """Validation images of the LoRA being trained, without disturbing the training.

    The modules are switched to eval mode (no LoRA dropout) and back, and sampling runs inside
    :func:`torch.random.fork_rng`, so a run with validation draws exactly the same training
    noise as one without, and a resumed run matches an uninterrupted one.
    """
    modules = [m for m in (unet, text_encoder, text_encoder_2) if m is not None]
    modes = [m.training for m in modules]
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        for module in modules:
            module.eval()
        with torch.random.fork_rng(devices=cuda):
            pipeline = pipeline_from_backbone(backbone, unet=unet, text_encoder=text_encoder,
                                              text_encoder_2=text_encoder_2)
            pipeline.set_progress_bar_config(disable=True)
            return generate(pipeline, prompt, num_images, seed=seed,
                            num_inference_steps=num_inference_steps, resolution=resolution)
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def log_images(accelerator, tag: str, images: list[Image.Image], step: int) -> None:
    """Send images to TensorBoard when it is the active tracker."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(image) for image in images])
            tracker.writer.add_images(tag, stacked, step, dataformats="NHWC")


def render_comparison(
    backbone_path: str | Path,
    lora_dir: str | Path,
    prompts: list[str],
    num_images: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 25,
    resolution: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Image.Image, list[list[Image.Image]]]:
    """Base model vs. saved LoRA, same prompts and seeds, as one captioned grid.

    The LoRA is read back from ``lora_dir`` with ``load_lora_weights``, the same call users make,
    so a grid that renders proves the saved file loads.

    Returns:
        ``(grid, rows)``: rows alternate base / LoRA per prompt, ``num_images`` images each.
    """
    pipeline = load_text_to_image_pipeline(backbone_path, dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    kwargs = {"seed": seed, "num_inference_steps": num_inference_steps, "resolution": resolution}
    base_rows = [generate(pipeline, prompt, num_images, **kwargs) for prompt in prompts]
    pipeline.load_lora_weights(lora_dir)
    new_tokens = load_new_tokens(lora_dir, pipeline.tokenizer, pipeline.text_encoder)
    lora_rows = [generate(pipeline, prompt, num_images, **kwargs) for prompt in expand_prompts(prompts, new_tokens)]
    rows, labels = [], []
    for prompt, base, lora in zip(prompts, base_rows, lora_rows):
        rows += [base, lora]
        labels += [f"base: {prompt}", f"LoRA: {prompt}"]
    columns = [f"seed {seed + i}" for i in range(num_images)]
    return image_grid(rows, row_labels=labels, column_labels=columns, cell_size=max(96, rows[0][0].width)), rows
