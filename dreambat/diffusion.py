"""The diffusion-specific pieces of training: prompts, latents, noise, targets and the loss.

Everything that knows about VAEs, text encoders, timesteps and ε/v-prediction lives here, so the
rest of dreambat (training loop, ALBAT scoring) sees a loss and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from .errors import ConfigError


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[B, model_max_length]``, padded and truncated as Stable Diffusion expects."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Text-encoder hidden states ``[B, 77, hidden]`` used as UNet cross-attention context."""
    return text_encoder(input_ids.to(text_encoder.device), return_dict=False)[0]


def unet_conditioning(
    backbone,
    prompts: Sequence[str],
    *,
    text_encoder=None,
    text_encoder_2=None,
    size: tuple[int, int] | None = None,
    crop_top_left: tuple[int, int] = (0, 0),
    original_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, object]:
    """The UNet's prompt conditioning for ``prompts``, as keyword arguments of its forward.

    Stable Diffusion 1.x/2.x: ``encoder_hidden_states``, the text encoder's last hidden states.
    SDXL (a backbone with ``text_encoder_2``): the penultimate hidden states of both encoders
    concatenated, plus ``added_cond_kwargs`` with the second encoder's projected pooled output
    (``text_embeds``) and the micro-conditioning ``time_ids`` ``(original h, w, crop top, left,
    target h, w)``: each row's ``original_sizes`` entry (its image before resizing; default
    ``size``), ``crop_top_left`` (the SDXL script's ``--crops_coords_top_left_h/w``) and ``size``
    (the images' height and width as trained; default the native resolution).
    ``text_encoder`` / ``text_encoder_2`` replace the backbone's (the accelerate-wrapped modules
    that are being trained).
    """
    text_encoder = text_encoder if text_encoder is not None else backbone.text_encoder
    ids = tokenize_prompts(backbone.tokenizer, prompts)
    second = getattr(backbone, "text_encoder_2", None)
    if second is not None and text_encoder_2 is not None:
        second = text_encoder_2
    if second is None:
        return {"encoder_hidden_states": encode_prompts(text_encoder, ids)}
    first = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    ids_2 = tokenize_prompts(backbone.tokenizer_2, prompts)
    out_2 = second(ids_2.to(second.device), output_hidden_states=True)
    context = torch.cat([first.hidden_states[-2], out_2.hidden_states[-2].to(first.hidden_states[-2].device)], dim=-1)
    height, width = size or (backbone.native_resolution,) * 2
    originals = list(original_sizes) if original_sizes is not None else [(height, width)] * len(prompts)
    if len(originals) != len(prompts):
        raise ValueError(f"{len(originals)} original sizes for {len(prompts)} prompts.")
    time_ids = torch.tensor([[*original, *crop_top_left, height, width] for original in originals],
                            dtype=context.dtype, device=context.device)
    return {"encoder_hidden_states": context,
            "added_cond_kwargs": {"text_embeds": out_2.text_embeds.to(context.device), "time_ids": time_ids}}


@torch.no_grad()
def encode_images(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents ``[B, 4, H/f, W/f]`` of images ``[B, 3, H, W]`` in ``[-1, 1]``.

    Uses the posterior mean rather than a sample: the latent of a training image is then a fixed
    function of the image, which keeps per-sample losses reproducible.
    """
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixel_values).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict: ε, or v for v-prediction schedulers. Same shape as latents."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ConfigError(
        f"Unsupported scheduler prediction_type {prediction_type!r}: dreambat trains "
        "'epsilon' and 'v_prediction' backbones."
    )


def offset_noise(
    latents: torch.Tensor, noise_offset: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian noise like ``latents``, plus a per-channel constant of scale ``noise_offset``."""
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    if noise_offset:
        shift = torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=latents.dtype
        ).to(latents.device)
        noise = noise + noise_offset * shift
    return noise


def min_snr_weight(scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights ``[B]`` (Hang et al., 2023): ``min(SNR(t), γ) / SNR(t)`` for
    ε-prediction, ``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction."""
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=snr_gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return weight / (snr + 1)
    return weight / snr


def denoising_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    scheduler=None,
    timesteps: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Per-sample denoising loss ``[B]``: mean squared error, optionally Min-SNR-γ weighted
    (:func:`min_snr_weight`)."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
    if snr_gamma is None:
        return per_sample
    return per_sample * min_snr_weight(scheduler, timesteps, snr_gamma).to(per_sample.device)
