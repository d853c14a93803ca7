"""Sampling the world backbone: a DDIM pipeline with classifier-free guidance, and sample grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from dreambat.image_grid import image_grid

GRID_CAPTIONS: tuple[str, ...] = (
    "a red circle on a white background",
    "a blue square on a yellow background",
    "a green triangle on a gray background",
    "a yellow star on a blue background",
    "a pink heart on a black background",
    "an orange hexagon on a green background",
    "a purple cross on a white background",
    "a black diamond on a pink background",
    "a white circle on a red background",
    "a brown square on a white background",
    "a large blue triangle on an orange background",
    "a small red star on a gray background",
    "a green striped heart on a yellow background",
    "a yellow dotted hexagon on a purple background",
    "a blue checkered diamond on a white background",
    "two red circles on a blue background",
)
"""16 captions in the world's vocabulary for the backbone's sample grid."""

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0


def load_pipeline(folder: str | Path, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """The backbone as a ``StableDiffusionPipeline`` with a DDIM sampler from its scheduler config."""
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        local_files_only=True, dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], *,
             steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             batch_size: int = 64) -> list[Image.Image]:
    """One image per ``(prompt, seed)`` pair (``len(prompts) == len(seeds)``), in order.

    Each image's initial noise comes from ``torch.Generator().manual_seed(seed)``, so an image
    does not depend on what it is batched with.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds.")
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        out = pipe(chunk, height=size, width=size, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gens, output_type="pil")
        images.extend(out.images)
    return images


def sample_grid(folder: str | Path, captions: Sequence[str] = GRID_CAPTIONS,
                seeds: Sequence[int] = (0, 1, 2, 3), *, steps: int = DEFAULT_STEPS,
                guidance: float = DEFAULT_GUIDANCE, cell_size: int = 64) -> Image.Image:
    """A grid with one row per caption and one column per seed, images upscaled to ``cell_size``."""
    pipe = load_pipeline(folder)
    prompts = [c for c in captions for _ in seeds]
    images = generate(pipe, prompts, [s for _ in captions for s in seeds], steps=steps,
                      guidance=guidance)
    rows = [images[r * len(seeds):(r + 1) * len(seeds)] for r in range(len(captions))]
    resized = [[im.resize((cell_size, cell_size), Image.Resampling.NEAREST) for im in row] for row in rows]
    return image_grid(resized, row_labels=list(captions), column_labels=[f"seed {s}" for s in seeds],
                      cell_size=cell_size, label_width=260)
