"""Tiny Stable Diffusion backbones built from configs, for offline tests and the demo.

Every component has the architecture of Stable Diffusion 1.x (a conditional UNet with
cross-attention, a KL autoencoder, a CLIP text encoder, a CLIP BPE tokenizer, a DDPM scheduler),
only narrower and shallower, with seeded random weights. The folder written by
:func:`write_tiny_backbone` is an ordinary diffusers folder: ``StableDiffusionPipeline.from_pretrained``
loads it with the network off, and every code path that takes a real checkpoint takes it.

All sizes live in :data:`TINY_SIZES`; add one there rather than passing loose numbers around.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import ConfigError
from .tokenizer import build_clip_tokenizer


@dataclass(frozen=True)
class TinySize:
    """Widths and depths of one tiny backbone. ``resolution`` is the native image size."""

    resolution: int
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    unet_head_dim: int
    vae_channels: tuple[int, ...]
    text_hidden: int
    text_layers: int
    text_heads: int
    unet_attention: tuple[bool, ...] | None = None
    """Which UNet levels (finest first) carry cross-attention; None: every level but the coarsest,
    as SD does. Self-attention over a fine level's many positions dominates a CPU step."""
    vae_mid_attention: bool = True

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


TINY_SIZES: dict[str, TinySize] = {
    # Unit tests: a UNet forward+backward on a 32 px batch takes milliseconds on one core.
    "test": TinySize(
        resolution=32,
        unet_channels=(32, 64),
        unet_layers_per_block=1,
        unet_head_dim=8,
        vae_channels=(32, 64),
        text_hidden=32,
        text_layers=2,
        text_heads=4,
    ),
    # The demo: still seconds per training step on 2 CPU cores, wide enough to learn a subject.
    "demo": TinySize(
        resolution=64,
        unet_channels=(64, 128, 128),
        unet_layers_per_block=1,
        unet_head_dim=16,
        vae_channels=(32, 64, 64),
        text_hidden=64,
        text_layers=3,
        text_heads=4,
    ),
}


def get_tiny_size(name: str) -> TinySize:
    """Look up a tiny size by name, with an error that lists the valid names."""
    try:
        return TINY_SIZES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown tiny backbone size {name!r}; choose one of {sorted(TINY_SIZES)}."
        ) from None


def build_tiny_components(
    size: str | TinySize = "test", *, seed: int = 0, words: Iterable[str] = ()
) -> dict[str, object]:
    """Build the five Stable Diffusion components with seeded random weights.

    Args:
        size: a name from :data:`TINY_SIZES` or a :class:`TinySize`.
        seed: seeds every weight, so the same seed gives the same backbone bit for bit.
        words: extra words the tokenizer should know as single tokens (e.g. caption vocabulary).

    Returns:
        ``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}``, ready for
        ``StableDiffusionPipeline(**components, safety_checker=None, ...)``.
    """
    spec = get_tiny_size(size) if isinstance(size, str) else size
    tokenizer = build_clip_tokenizer(words)
    n_blocks = len(spec.unet_channels)
    attention = spec.unet_attention or (True,) * (n_blocks - 1) + (False,)
    if len(attention) != n_blocks:
        raise ConfigError(f"unet_attention has {len(attention)} entries for {n_blocks} UNet levels.")
    down_blocks = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up_blocks = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=spec.latent_resolution,
            in_channels=4,
            out_channels=4,
            block_out_channels=spec.unet_channels,
            layers_per_block=spec.unet_layers_per_block,
            down_block_types=down_blocks,
            up_block_types=up_blocks,
            cross_attention_dim=spec.text_hidden,
            attention_head_dim=spec.unet_head_dim,
            norm_num_groups=min(32, spec.unet_channels[0]),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
            block_out_channels=spec.vae_channels,
            layers_per_block=1,
            latent_channels=4,
            mid_block_add_attention=spec.vae_mid_attention,
            norm_num_groups=min(32, spec.vae_channels[0]),
            sample_size=spec.resolution,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=spec.text_hidden,
                intermediate_size=4 * spec.text_hidden,
                num_hidden_layers=spec.text_layers,
                num_attention_heads=spec.text_heads,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        prediction_type="epsilon",
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


BACKBONE_SIZES = (*TINY_SIZES, "sd15", "test-sdxl", "sdxl")
"""Every size ``dreambat make-backbone`` writes: the tiny ones, ``sd15`` (SD-1.5's exact shapes),
a tiny SDXL for tests and ``sdxl`` (SDXL-base-1.0's exact shapes)."""


def build_tiny_pipeline(
    size: str | TinySize = "test", *, seed: int = 0, words: Iterable[str] = (), dtype: torch.dtype = torch.float32,
) -> StableDiffusionPipeline:
    """A :class:`StableDiffusionPipeline` over :func:`build_tiny_components`, or over
    :func:`~dreambat.backbone.sd15.build_sd15_components` for ``"sd15"`` (no safety checker); for
    ``"test-sdxl"`` / ``"sdxl"`` a ``StableDiffusionXLPipeline`` (:mod:`dreambat.backbone.sdxl`)."""
    from .sdxl import SDXL_SIZES, build_sdxl_pipeline

    if size in SDXL_SIZES:
        return build_sdxl_pipeline(size, seed=seed, words=words, dtype=dtype)
    if size == "sd15":
        from .sd15 import build_sd15_components

        components = build_sd15_components(seed=seed, dtype=dtype)
    else:
        components = build_tiny_components(size, seed=seed, words=words)
    return StableDiffusionPipeline(
        **components,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_backbone(
    folder: str | Path,
    size: str | TinySize = "test",
    *,
    seed: int = 0,
    words: Iterable[str] = (),
    overwrite: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete diffusers Stable Diffusion folder with a tiny random backbone.

    The folder is written to a temporary sibling and renamed into place, so a crash never leaves
    a half-written model behind. An existing complete folder is kept unless ``overwrite``.

    Returns:
        The folder path; ``StableDiffusionPipeline.from_pretrained(path)`` loads it offline.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file() and not overwrite:
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # shards of at most 2 GB: serialising SDXL's 10 GB UNet in one piece would need a second copy in memory
    build_tiny_pipeline(size, seed=seed, words=words, dtype=dtype).save_pretrained(
        tmp, safe_serialization=True, max_shard_size="2GB")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
