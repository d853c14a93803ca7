"""The ALBAT task for Stable Diffusion: a per-sample denoising loss that is a fixed function.

``ℓ(x; θ)`` is the mean over the terms of a :class:`~dreambat.scoring.draws.DrawDesign` (K
timestep strata, optionally several noise draws each, antithetic pairs, common random numbers)
of an output function of the UNet: the DreamBooth loss (``mse``: ‖prediction − target‖², target ε
or v) or D-TRAK's ``square`` (‖prediction‖²). Latents are the VAE posterior mean; each term's
timestep and noise depend on the sample's key, the term's slot and the seed only, so neither a
loss nor a score depends on the batch a sample lands in, its position, the process or the machine.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..backbone.load import Backbone
from ..diffusion import diffusion_target, encode_images, unet_conditioning
from ..errors import ConfigError
from .draws import DrawDesign

OutputFunction = Literal["mse", "square"]
OUTPUT_FUNCTIONS: tuple[str, ...] = ("mse", "square")


def fixed_timesteps(num_timesteps: int, num_train_timesteps: int) -> torch.Tensor:
    """K timesteps at the centres of K equal slices of ``[0, T)``: ``t_k = ⌊(k + ½)·T/K⌋``. ``[K]``."""
    return DrawDesign(num_timesteps).timesteps_for(num_train_timesteps)


class DiffusionLossTask:
    """Per-sample, per-term denoising losses of a (LoRA-adapted) Stable Diffusion backbone.

    Batches are ``{"pixel_values": [B,3,H,W] in [-1,1], "prompts": [B], "keys": [B]}`` as the
    subject and backbone collates make them. :meth:`loss_matrix` runs the UNet (and the text
    encoder) on ``B·J`` rows in sample-major order, J the design's terms per sample (row
    ``i·J + j`` is sample i's term j), as the fast scorer requires.

    Args:
        backbone: the components; the UNet (and text encoder) may carry LoRA adapters.
        design: the draws, or an int K for K stratum centres with one key-seeded draw each.
        output: ``"mse"`` (the training loss) or ``"square"`` (D-TRAK's ‖ε_θ‖²).
        crop_top_left: SDXL's crop micro-conditioning, as in training (ignored by SD-1.x/2.x).
    """

    def __init__(self, backbone: Backbone, design: DrawDesign | int, *, output: OutputFunction = "mse",
                 crop_top_left: tuple[int, int] = (0, 0)):
        if output not in OUTPUT_FUNCTIONS:
            raise ConfigError(f"Unknown score output function {output!r}; choose one of {', '.join(OUTPUT_FUNCTIONS)}.")
        self.backbone = backbone
        self.design = design if isinstance(design, DrawDesign) else DrawDesign(design)
        self.output = output
        self.crop_top_left = tuple(crop_top_left)
        self.timesteps = self.design.timesteps_for(backbone.noise_scheduler.config.num_train_timesteps)

    @property
    def num_terms(self) -> int:
        """J, the loss terms (UNet rows) per sample."""
        return self.design.num_terms

    def batch_size(self, batch: dict) -> int:
        return len(batch["keys"])

    def term_halves(self) -> tuple[list[int], list[int]]:
        return self.design.halves()

    def term_groups(self) -> list[int]:
        return self.design.term_groups()

    def loss_matrix(self, batch: dict) -> torch.Tensor:
        """Per-term losses ``[B, J]`` of each sample.

        A batch may carry ``"terms"``, a sequence of term indices: then only those terms are
        computed (``[B, len(terms)]``), so that thousands of reference draws run in chunks.
        """
        backbone = self.backbone
        device = backbone.unet.device
        terms = list(batch.get("terms", range(self.num_terms)))
        J = len(terms)
        with torch.no_grad():
            latents = encode_images(backbone.vae, batch["pixel_values"])
        B = latents.shape[0]
        noise = self.design.noise(batch["keys"], latents.shape[1:])[:, terms].to(device=device, dtype=latents.dtype)
        latents = latents.repeat_interleave(J, dim=0)
        noise = noise.reshape(B * J, *latents.shape[1:])
        timesteps = self.timesteps[terms].to(device).repeat(B)
        noisy = backbone.noise_scheduler.add_noise(latents, noise, timesteps)
        # One text-encoder row per term too, so a text-encoder LoRA's gradients separate by term.
        prompts = [prompt for prompt in batch["prompts"] for _ in range(J)]
        originals = batch.get("original_sizes")
        conditioning = unet_conditioning(
            backbone, prompts, size=tuple(batch["pixel_values"].shape[-2:]), crop_top_left=self.crop_top_left,
            original_sizes=None if originals is None else [size for size in originals for _ in range(J)])
        prediction = backbone.unet(noisy, timesteps, **conditioning, return_dict=False)[0].float()
        if self.output == "square":
            per_row = prediction.pow(2).mean(dim=(1, 2, 3))
        else:
            target = diffusion_target(backbone.noise_scheduler, latents, noise, timesteps)
            per_row = (prediction - target.float()).pow(2).mean(dim=(1, 2, 3))
        return per_row.reshape(B, J)

    def chunks(self, batch: dict, rows: int) -> list[dict]:
        """``batch`` (one sample) split into batches of at most ``rows`` consecutive terms each."""
        return [batch | {"terms": range(start, min(start + rows, self.num_terms))}
                for start in range(0, self.num_terms, max(1, rows))]
