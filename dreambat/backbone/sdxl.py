"""Stable Diffusion XL backbones built offline: SDXL-base-1.0's exact shapes, and a tiny SDXL for tests.

SDXL differs from SD-1.x where every stage notices: two text encoders (CLIP ViT-L/14 and OpenCLIP
ViT-bigG/14) whose penultimate hidden states are concatenated into the cross-attention context,
the second one's projected pooled output as extra conditioning (``text_embeds``), and six
"micro-conditioning" numbers per image (``time_ids``: original size, crop top-left, target size)
embedded beside the timestep. :data:`SDXL_UNET` and the encoders' configs reproduce the released
parameter counts (:data:`SDXL_PARAMETERS`, checked on the meta device by the tests); the weights
are seeded random, so time, memory and LoRA size are real and image quality is not.

``dreambat make-backbone FOLDER --size sdxl`` writes the full one, ``--size test-sdxl`` the tiny one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .sd15 import SD15_TEXT_ENCODER, SD15_VAE, sd_scheduler
from .tokenizer import build_clip_tokenizer, build_real_clip_tokenizer

SDXL_SIZES = ("test-sdxl", "sdxl")
"""The SDXL sizes ``dreambat make-backbone`` writes."""
SDXL_RESOLUTION = 1024
TIME_IDS_PER_IMAGE = 6
"""``(original_h, original_w, crop_top, crop_left, target_h, target_w)``."""

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
SDXL_VAE = SD15_VAE | dict(sample_size=SDXL_RESOLUTION, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_ENCODER = SD15_TEXT_ENCODER
"""CLIP ViT-L/14's text tower, as in SD-1.x."""
SDXL_TEXT_ENCODER_2 = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)
SDXL_PARAMETERS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                   "text_encoder_2": 694_659_840}
"""Parameter counts of SDXL-base-1.0's released components, which these configs reproduce."""

SECOND_PAD_TOKEN = "!"
"""SDXL's second tokenizer pads with ``!`` (id 0) where the first pads with ``<|endoftext|>``."""

TINY_SDXL_RESOLUTION = 32


def _scheduler() -> DDPMScheduler:
    return sd_scheduler(timestep_spacing="leading")


def build_sdxl_components(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, object]:
    """The seven components with SDXL-base-1.0's shapes and seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2))
    if dtype != torch.float32:  # diffusers warns on any .to(dtype) cast, even a no-op one
        unet, vae = unet.to(dtype), vae.to(dtype)
        text_encoder, text_encoder_2 = text_encoder.to(dtype), text_encoder_2.to(dtype)
    tokenizer = build_real_clip_tokenizer()
    tokenizer_2 = build_real_clip_tokenizer()
    tokenizer_2.pad_token = SECOND_PAD_TOKEN
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "text_encoder_2": text_encoder_2.eval(), "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
            "scheduler": _scheduler()}


def build_tiny_sdxl_components(*, seed: int = 0, words: Iterable[str] = ()) -> dict[str, object]:
    """An SDXL with every structural feature of the real one (two encoders of different widths,
    pooled text embeddings, time ids, linear projections, a level without attention, several
    transformer layers in one block) at a size whose training step takes milliseconds."""
    tokenizer = build_clip_tokenizer(words)
    tokenizer_2 = build_clip_tokenizer(words)
    tokenizer_2.pad_token = SECOND_PAD_TOKEN
    hidden, hidden_2, time_dim = 32, 48, 8

    def encoder_config(width: int, pad_id: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=width,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=TINY_SDXL_RESOLUTION // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4), cross_attention_dim=hidden + hidden_2, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=hidden_2 + TIME_IDS_PER_IMAGE * time_dim, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32, sample_size=TINY_SDXL_RESOLUTION, scaling_factor=0.13025,
        )
        text_encoder = CLIPTextModel(encoder_config(hidden, tokenizer.pad_token_id))
        text_encoder_2 = CLIPTextModelWithProjection(encoder_config(hidden_2, tokenizer_2.pad_token_id))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "text_encoder_2": text_encoder_2.eval(), "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
            "scheduler": _scheduler()}


def build_sdxl_pipeline(size: str = "test-sdxl", *, seed: int = 0, words: Iterable[str] = (),
                        dtype: torch.dtype = torch.float32):
    """A ``StableDiffusionXLPipeline`` over :func:`build_tiny_sdxl_components` (``test-sdxl``) or
    :func:`build_sdxl_components` (``sdxl``), without the invisible watermark."""
    from diffusers import StableDiffusionXLPipeline

    if size == "sdxl":
        components = build_sdxl_components(seed=seed, dtype=dtype)
    elif size == "test-sdxl":
        components = build_tiny_sdxl_components(seed=seed, words=words)
    else:
        raise ValueError(f"Unknown SDXL size {size!r}; choose one of {SDXL_SIZES}.")
    return StableDiffusionXLPipeline(**components, add_watermarker=False)
