"""The ALBAT task for Stable Diffusion: a per-sample denoising loss that is a fixed function.

``ℓ(x; θ)`` is the mean over K fixed timesteps ``t_k`` (spread evenly over the training range) of
the DreamBooth loss, with the noise for ``(x, t_k)`` drawn from a generator seeded by a hash of
the sample's key and ``k``. Latents are the VAE posterior mean. Nothing depends on the batch a
sample lands in, its position, the process or the machine, so neither does its score.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ..backbone.load import Backbone
from ..diffusion import (
    diffusion_target,
    encode_images,
    encode_prompts,
    tokenize_prompts,
)
from ..errors import ConfigError


def fixed_timesteps(num_timesteps: int, num_train_timesteps: int) -> torch.Tensor:
    """K timesteps at the centres of K equal slices of ``[0, T)``: ``t_k = ⌊(k + ½)·T/K⌋``. ``[K]``."""
    if num_timesteps < 1:
        raise ConfigError(
            f"The number of scoring timesteps K must be >= 1, got {num_timesteps} "
            "(--num_score_timesteps)."
        )
    if num_timesteps > num_train_timesteps:
        raise ConfigError(f"K = {num_timesteps} exceeds the scheduler's {num_train_timesteps} timesteps.")
    k = torch.arange(num_timesteps, dtype=torch.float64)
    return ((k + 0.5) * num_train_timesteps / num_timesteps).floor().long()


def noise_seed(key: str, k: int) -> int:
    """A 63-bit seed from the sample key and timestep index (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{key}\x1f{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def keyed_noise(keys: Sequence[str], num_timesteps: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise ``[B, K, *shape]``; entry (i, k) depends only on ``keys[i]`` and k."""
    generator = torch.Generator()
    noise = torch.empty(len(keys), num_timesteps, *shape)
    for i, key in enumerate(keys):
        for k in range(num_timesteps):
            generator.manual_seed(noise_seed(key, k))
            noise[i, k] = torch.randn(*shape, generator=generator)
    return noise


class DiffusionLossTask:
    """Per-sample, per-timestep denoising losses of a (LoRA-adapted) Stable Diffusion backbone.

    Batches are ``{"pixel_values": [B,3,H,W] in [-1,1], "prompts": [B], "keys": [B]}`` as the
    subject and backbone collates make them. :meth:`loss_matrix` runs the UNet on ``B·K`` rows
    in sample-major order (row ``i·K + k`` is sample i at ``t_k``), as the fast scorer requires.
    """

    def __init__(self, backbone: Backbone, num_timesteps: int):
        self.backbone = backbone
        self.timesteps = fixed_timesteps(num_timesteps, backbone.noise_scheduler.config.num_train_timesteps)

    @property
    def num_timesteps(self) -> int:
        return len(self.timesteps)

    def batch_size(self, batch: dict) -> int:
        return len(batch["keys"])

    def loss_matrix(self, batch: dict) -> torch.Tensor:
        """Denoising MSE ``[B, K]`` of each sample at each fixed timestep."""
        backbone = self.backbone
        unet = backbone.unet
        device = unet.device
        K = self.num_timesteps
        with torch.no_grad():
            latents = encode_images(backbone.vae, batch["pixel_values"])
        B = latents.shape[0]
        noise = keyed_noise(batch["keys"], K, latents.shape[1:]).to(device=device, dtype=latents.dtype)
        latents = latents.repeat_interleave(K, dim=0)
        noise = noise.reshape(B * K, *latents.shape[1:])
        timesteps = self.timesteps.to(device).repeat(B)
        noisy = backbone.noise_scheduler.add_noise(latents, noise, timesteps)
        context = encode_prompts(backbone.text_encoder, tokenize_prompts(backbone.tokenizer, batch["prompts"]))
        context = context.repeat_interleave(K, dim=0)
        prediction = unet(noisy, timesteps, context, return_dict=False)[0]
        target = diffusion_target(backbone.noise_scheduler, latents, noise, timesteps)
        per_row = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        return per_row.reshape(B, K)
