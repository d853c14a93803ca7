"""Adding, listing and saving LoRA adapters, the way diffusers' DreamBooth-LoRA does.

The UNet gets LoRA on its attention projections through diffusers' PEFT integration
(``unet.add_adapter``); the text encoder, optionally, through transformers'. Saved weights use the
diffusers LoRA format, so ``StableDiffusionPipeline.load_lora_weights(output_dir)`` reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from .constants import LORA_WEIGHTS_NAME, TEXT_ENCODER_LORA_TARGET_MODULES, UNET_LORA_TARGET_MODULES
from .errors import ConfigError


def lora_config(
    rank: int,
    target_modules: Sequence[str],
    *,
    alpha: float | None = None,
    dropout: float = 0.0,
    init_lora_weights: bool | str = "gaussian",
) -> LoraConfig:
    """A peft ``LoraConfig``; ``alpha`` defaults to ``rank`` (scale 1) as in diffusers' script."""
    if rank < 1:
        raise ConfigError(f"--rank must be a positive integer, got {rank}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--lora_dropout must be in [0, 1), got {dropout}.")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        init_lora_weights=init_lora_weights,
        target_modules=list(target_modules),
    )


def add_unet_lora(unet, rank: int, **kwargs) -> None:
    """Freeze ``unet`` and add a trainable LoRA adapter to its attention projections."""
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank, UNET_LORA_TARGET_MODULES, **kwargs))


def add_text_encoder_lora(text_encoder, rank: int, **kwargs) -> None:
    """Freeze ``text_encoder`` and add a trainable LoRA adapter to its self-attention."""
    text_encoder.requires_grad_(False)
    text_encoder.add_adapter(lora_config(rank, TEXT_ENCODER_LORA_TARGET_MODULES, **kwargs))


def lora_parameters(*models: torch.nn.Module | None) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters of ``models`` (``None`` entries ignored), in module order."""
    return [
        param
        for model in models
        if model is not None
        for name, param in model.named_parameters()
        if "lora_" in name and param.requires_grad
    ]


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of ``model`` converted to diffusers' key names, detached on CPU."""
    state = convert_state_dict_to_diffusers(
        get_peft_model_state_dict(model, save_embedding_layers=False)
    )
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def save_lora(output_dir: str | Path, unet, text_encoder=None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format.

    Args:
        output_dir: created if missing.
        unet: a UNet with a LoRA adapter (possibly wrapped by accelerate: unwrap it first).
        text_encoder: a text encoder with a LoRA adapter, or ``None`` when it was not trained.

    Returns:
        The path of the weights file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        output_dir,
        unet_lora_layers=lora_state_dict(unet),
        text_encoder_lora_layers=lora_state_dict(text_encoder) if text_encoder is not None else None,
        weight_name=LORA_WEIGHTS_NAME,
        safe_serialization=True,
    )
    return output_dir / LORA_WEIGHTS_NAME
