"""A Stable Diffusion 1.5-shaped backbone built offline: SD-1.5's exact UNet, VAE and CLIP ViT-L/14
text-encoder configs with seeded random weights, and the real CLIP tokenizer.

Random weights cost what real ones cost (memory, time per step, LoRA size), so every path of the
product can be exercised and measured at the real shape without a download; they say nothing
about image quality. ``dreambat make-backbone FOLDER --size sd15`` writes one.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import build_real_clip_tokenizer

SD15_RESOLUTION = 512

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=SD15_RESOLUTION,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215,
)
SD15_TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
"""Parameter counts of SD-1.5's released components, which these configs reproduce."""


def sd_scheduler(**overrides) -> DDPMScheduler:
    """The DDPM noise schedule Stable Diffusion 1.x and SDXL train with (``overrides``: SDXL's
    ``timestep_spacing="leading"``)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                         prediction_type="epsilon", **overrides)


def build_sd15_components(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, object]:
    """The five components with SD-1.5's shapes and seeded random weights (``dtype`` for the models)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))
    scheduler = sd_scheduler()
    if dtype != torch.float32:  # diffusers warns on any .to(dtype) cast, even a no-op one
        unet, vae, text_encoder = unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": build_real_clip_tokenizer(), "scheduler": scheduler}
