"""Batched, seeded, resumable image generation for several methods (base model and LoRAs).

One pipeline is loaded; LoRAs are swapped in and out with :func:`dreambat.lora.load_lora` and
:func:`~dreambat.lora.unload_lora`. Every image has its own CPU ``torch.Generator``, so an
image depends on its seed only, not on the batch it was drawn in or on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import torch
from PIL import Image

from ..files import save_image_atomically
from ..lora import load_lora, unload_lora
from ..pivotal import NewTokens, expand_prompts, load_new_tokens
from .config import GenerationSettings

logger = logging.getLogger(__name__)


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` -> the torch dtype."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def scheduler_class(name: str):
    """The diffusers scheduler class behind a ``--scheduler`` name."""
    import diffusers

    return {
        "ddim": diffusers.DDIMScheduler,
        "ddpm": diffusers.DDPMScheduler,
        "dpm": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "euler_a": diffusers.EulerAncestralDiscreteScheduler,
        "pndm": diffusers.PNDMScheduler,
    }[name]


def load_pipeline(folder: str | Path, *, device: torch.device, dtype: torch.dtype = torch.float32,
                  scheduler: str | None = None):
    """A Stable Diffusion or SDXL pipeline from a local diffusers folder (no safety checker or
    watermark, no progress bar).

    ``scheduler`` replaces the folder's sampler (built from the folder's scheduler config).
    """
    from ..backbone.load import load_text_to_image_pipeline

    pipeline = load_text_to_image_pipeline(folder, dtype=dtype)
    if scheduler is not None:
        pipeline.scheduler = scheduler_class(scheduler).from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


class LoraSwitch:
    """Keeps at most one LoRA loaded into ``pipeline``; :meth:`use` swaps it only when it changes."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.current: Path | None = None
        self.new_tokens: NewTokens | None = None

    def use(self, lora: Path | None) -> None:
        """Load the LoRA folder ``lora`` (``None``: the bare base model), with its new-token
        embeddings when it was trained with pivotal tuning."""
        if lora == self.current:
            return
        second = getattr(self.pipeline, "text_encoder_2", None)  # SDXL's
        if self.current is not None:
            unload_lora(self.pipeline.unet, self.pipeline.text_encoder, second)
        self.new_tokens = None
        if lora is not None:
            load_lora(lora, self.pipeline.unet, self.pipeline.text_encoder, second)
            self.new_tokens = load_new_tokens(lora, self.pipeline.tokenizer, self.pipeline.text_encoder)
        self.current = lora

    def prompts(self, prompts: Sequence[str]) -> list[str]:
        """``prompts`` as the loaded LoRA reads them: its token abstraction (``TOK``) expanded."""
        return expand_prompts(prompts, self.new_tokens)

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Warn when the loaded LoRA has new tokens that none of ``prompts`` (all its jobs) names."""
        new = self.new_tokens
        if new is not None and new.abstraction and not any(new.abstraction in p for p in prompts):
            logger.warning(
                "%s was trained with new tokens for %r, which none of its prompts contains (%r...): pass "
                "--unique_token %s so the prompts name the subject.", self.current, new.abstraction, prompts[0],
                new.abstraction)


@torch.no_grad()
def generate_images(pipeline, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings,
                    ) -> list[Image.Image]:
    """One image per ``(prompt, seed)`` pair, in one pipeline call (a batch of ``len(prompts)``)."""
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    output = pipeline(
        list(prompts),
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        generator=generators,
        height=settings.resolution,
        width=settings.resolution,
        output_type="pil",
    )
    return output.images


@dataclass(frozen=True)
class ImageJob:
    """One image to have on disk: ``path`` from ``prompt`` and ``seed`` with LoRA ``lora``."""

    lora: Path | None
    prompt: str
    seed: int
    path: Path


def image_path(root: Path, method: str, subject: str, prompt_index: int, seed: int) -> Path:
    """``root/<method>/<subject>/<prompt_index>_<seed>.png`` (the resumable layout)."""
    return root / method / subject / f"{prompt_index:02d}_{seed}.png"


def prior_image_path(root: Path, method: str, subject: str, kind: str, seed: int) -> Path:
    """``root/<method>/<subject>/prior/<kind>_<seed>.png``: a PRES (``kind="class"``) or DIV
    (``kind="subject"``) image, beside the DreamBench ones and never mistaken for them."""
    return root / method / subject / "prior" / f"{kind}_{seed}.png"


def run_jobs(pipeline, jobs: Iterable[ImageJob], settings: GenerationSettings,
             on_image: Callable[[], None] | None = None) -> int:
    """Generate the jobs whose file is missing, batched per LoRA; returns how many were generated.

    Jobs are grouped by consecutive LoRA (keep them sorted by method and subject to load each LoRA
    once) and drawn ``settings.batch_size`` at a time. ``on_image`` is called after each saved image.
    """
    switch = LoraSwitch(pipeline)
    todo = [job for job in jobs if not job.path.is_file()]
    done = 0
    try:
        for lora, group in groupby(todo, key=lambda job: job.lora):
            group = list(group)
            switch.use(lora)
            switch.check_prompts([job.prompt for job in group])
            for start in range(0, len(group), settings.batch_size):
                batch = group[start:start + settings.batch_size]
                prompts = switch.prompts([job.prompt for job in batch])
                images = generate_images(pipeline, prompts, [job.seed for job in batch], settings)
                for job, image in zip(batch, images):
                    save_image_atomically(image, job.path)
                    done += 1
                    if on_image is not None:
                        on_image()
    finally:
        switch.use(None)
    return done
