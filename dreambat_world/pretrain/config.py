"""Settings of the world backbone's pretraining: the model size, the recipe, the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreambat.backbone.tiny import TinySize
from dreambat.errors import ConfigError
from dreambat.eval.encoders import resolve_device

WORLD_BACKBONE_SIZE = TinySize(
    resolution=32,
    unet_channels=(32, 64, 64),
    unet_layers_per_block=1,
    unet_head_dim=8,
    vae_channels=(32, 64),
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    unet_attention=(False, True, True),
    vae_mid_attention=False,
)
"""The world backbone: 32 px images, 16x16x4 latents, a three-level UNet (16, 8, 4 px) with
cross-attention at 8 and 4 px only: attention over the 256 positions of the 16 px level made a
CPU training step 2.4x slower and the objects are readable from 8 px up."""


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of :func:`pretrain`.

    Attributes:
        shards: pool shard paths (``scripts/make_world.py`` writes them).
        work_dir: checkpoint and log folder (resume reads ``work_dir/checkpoint.pt``).
        max_images: use at most this many pool images (None: all).
        seed: seeds the weights, batch order, noise and caption dropout.
        vae_minutes / max_minutes: wall-clock budget of the VAE phase / of both phases together.
        vae_batch_size, vae_lr, vae_kl_weight: VAE phase.
        vae_max_steps: end the VAE phase after this many steps even within its budget (None: time only).
        batch_size, lr, text_lr, warmup_steps, ema_decay, caption_dropout: denoiser phase.
        snr_gamma: min-SNR loss weighting ``min(snr, gamma) / snr`` (None: the plain MSE).
        max_steps: stop the denoiser phase after this many steps even within budget.
        decay_start, decay_steps: cool-down. From step ``decay_start`` the learning rates follow a
            cosine from their value down to ``decay_floor`` times it over ``decay_steps`` steps,
            then stay there (None: constant after warm-up). The schedule is a function of the
            step only, so setting it when resuming a constant-rate run reproduces the same recipe.
        checkpoint_minutes: write the checkpoint this often.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        mixed_precision: ``"no"`` or ``"bf16"`` (autocast of the forward passes; weights, optimiser
            state and EMA stay float32).
        init_from: a backbone folder (what :func:`save_backbone` writes) to continue from: its
            tokenizer, VAE, text encoder and UNet replace the freshly built ones, the VAE phase is
            skipped (its latents stay those the UNet learned on) and the denoiser phase starts at
            step 0 with a fresh optimiser and the learning rates of this config. Only read when
            ``work_dir`` has no checkpoint yet; a resumed run continues from its checkpoint.
    """

    shards: tuple[str, ...]
    work_dir: str
    max_images: int | None = None
    seed: int = 0
    vae_minutes: float = 5.0
    max_minutes: float = 30.0
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    text_lr: float = 2e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    snr_gamma: float | None = 5.0
    max_steps: int = 1_000_000
    decay_start: int | None = None
    decay_steps: int = 10_000
    decay_floor: float = 0.1
    checkpoint_minutes: float = 2.0
    device: str = "auto"
    mixed_precision: str = "no"
    init_from: str | None = None
    size: TinySize = field(default=WORLD_BACKBONE_SIZE)

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("PretrainConfig needs at least one pool shard; run scripts/make_world.py.")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}.")
        if self.vae_minutes >= self.max_minutes:
            raise ConfigError("vae_minutes must be smaller than max_minutes (the denoiser needs time).")
        if self.init_from is not None and not (Path(self.init_from) / "model_index.json").is_file():
            raise ConfigError(f"init_from {self.init_from!r} is not a backbone folder (no model_index.json); "
                              "give the folder scripts/pretrain_world_backbone.py wrote, e.g. "
                              "assets/world/backbone.")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}.")
        try:
            device = resolve_device(self.device)
        except RuntimeError as error:
            raise ConfigError(f"Unknown device {self.device!r} ({error}); use 'auto', 'cpu' or 'cuda'.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but torch sees no CUDA GPU here; "
                              "use --device auto or cpu.")
        if self.decay_start is not None and (self.decay_start < 0 or self.decay_steps < 1
                                             or not 0 <= self.decay_floor <= 1):
            raise ConfigError("The cool-down needs decay_start >= 0, decay_steps >= 1 and "
                              f"0 <= decay_floor <= 1; got {self.decay_start}, {self.decay_steps}, "
                              f"{self.decay_floor}.")


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """The denoiser's learning-rate multiplier at ``step``: linear warm-up, constant, then the
    optional cosine cool-down of ``cfg`` (see :class:`PretrainConfig`)."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.decay_start is not None and step > cfg.decay_start:
        progress = min(1.0, (step - cfg.decay_start) / cfg.decay_steps)
        factor *= cfg.decay_floor + (1 - cfg.decay_floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def autocast(cfg: PretrainConfig, device: torch.device):
    """bf16 autocast of the forward passes when the config asks for it (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")
