"""LoRA adapters on the UNet and text encoder: add, find, save and load, the way diffusers does.

The UNet gets LoRA on its attention projections through diffusers' PEFT integration
(``unet.add_adapter``); the text encoder, optionally, through transformers'. Saved weights use the
diffusers LoRA format, so ``StableDiffusionPipeline.load_lora_weights(output_dir)`` reads them.

Every reader and writer of LoRA weights in dreambat goes through :func:`save_lora`,
:func:`load_lora` and :func:`unload_lora`; "is this a LoRA weight?" is answered by peft's own
layer type (:func:`dreambat.albat.blocks.lora_factors`), never by matching parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
    recurse_remove_peft_layers,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from .albat.blocks import lora_factors
from .constants import (
    LORA_WEIGHTS_NAME,
    TEXT_ENCODER_LORA_TARGET_MODULES,
    UNET_LORA_TARGET_MODULES,
)
from .errors import ConfigError, ModelNotFoundError


def check_lora_settings(rank: int, dropout: float) -> None:
    """The one check of a LoRA's shape settings (``--rank``, ``--lora_dropout``)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"--rank must be >= 1, got {rank}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--lora_dropout must be in [0, 1), got {dropout}.")


def lora_config(
    rank: int,
    target_modules: Sequence[str],
    *,
    alpha: float | None = None,
    dropout: float = 0.0,
    init_lora_weights: bool | str = "gaussian",
) -> LoraConfig:
    """A peft ``LoraConfig``; ``alpha`` defaults to ``rank`` (scale 1) as in diffusers' script."""
    check_lora_settings(rank, dropout)
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
    """The trainable LoRA weights of ``models`` (``None`` entries ignored), in module order.

    Raises:
        UnsupportedAdapterError: an adapter that the scoring core cannot score (an ``nn.Embedding``
            LoRA, DoRA, a factor of an unregistered type), refused by
            :func:`~dreambat.albat.blocks.lora_factors` rather than left untrained.
    """
    return [
        module.weight
        for model in models
        if model is not None
        for _, module in lora_factors(model)
        if module.weight.requires_grad
    ]


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of ``model`` converted to diffusers' key names, detached on CPU."""
    state = convert_state_dict_to_diffusers(
        get_peft_model_state_dict(model, save_embedding_layers=False)
    )
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def lora_weights_file(path: str | Path, *, what: str = "LoRA") -> Path:
    """The ``.safetensors`` file of a LoRA, given the file or the folder holding it.

    Raises:
        ModelNotFoundError: neither the file nor ``folder/pytorch_lora_weights.safetensors`` exists.
    """
    path = Path(path)
    file = path / LORA_WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise ModelNotFoundError(
            f"No {what} weights at '{path}': expected {LORA_WEIGHTS_NAME} (the output_dir of a "
            "DreamBooth-LoRA run, e.g. `train_dreambooth_bat.py --selection none --max_train_steps 200`), "
            "or the path of that file."
        )
    return file


def save_lora(output_dir: str | Path, unet, text_encoder=None, text_encoder_2=None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format.

    Args:
        output_dir: created if missing.
        unet: a UNet with a LoRA adapter (possibly wrapped by accelerate: unwrap it first).
        text_encoder: a text encoder with a LoRA adapter, or ``None`` when it was not trained.
        text_encoder_2: SDXL's second text encoder with a LoRA adapter (keys ``text_encoder_2.*``,
            as ``StableDiffusionXLPipeline.load_lora_weights`` reads them), or ``None``.

    Returns:
        The path of the weights file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    layers = {"unet_lora_layers": lora_state_dict(unet),
              "text_encoder_lora_layers": lora_state_dict(text_encoder) if text_encoder is not None else None}
    saver = StableDiffusionPipeline
    if text_encoder_2 is not None:
        saver, layers["text_encoder_2_lora_layers"] = StableDiffusionXLPipeline, lora_state_dict(text_encoder_2)
    saver.save_lora_weights(output_dir, **layers, weight_name=LORA_WEIGHTS_NAME, safe_serialization=True)
    return output_dir / LORA_WEIGHTS_NAME


def load_lora(source: str | Path, unet, text_encoder=None, text_encoder_2=None, *,
              adapter_name: str = "default") -> Path:
    """Load a diffusers-format LoRA (a folder or its ``.safetensors`` file) into ``unet`` /
    ``text_encoder`` / SDXL's ``text_encoder_2``.

    If the models have no adapter called ``adapter_name`` one is created from the file, with the
    rank and targets the file implies (as ``pipe.load_lora_weights`` does), its factors trainable
    in every model (as peft creates them). If they already have
    it (resuming a training checkpoint), its weights are overwritten in place, so an optimiser
    holding those parameters keeps working; the file must then fit exactly.

    Returns:
        The weights file that was read.

    Raises:
        ModelNotFoundError: no weights file at ``source``.
        ConfigError: the file does not fit existing adapters (other rank, or a text-encoder LoRA in
            the file but not in the run, or the reverse).
    """
    file = lora_weights_file(source)
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        _fill_adapters(file, unet, text_encoder, adapter_name, text_encoder_2)
        return file
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(file.parent), weight_name=file.name)
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, adapter_name=adapter_name)
    for prefix, model in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        if model is not None and any(key.startswith(prefix + ".") for key in state):
            StableDiffusionXLPipeline.load_lora_into_text_encoder(
                state, alphas, text_encoder=model, prefix=prefix, adapter_name=adapter_name
            )
            # transformers loads these frozen where diffusers' UNet loader leaves them trainable; ALBAT
            # differentiates every trainable LoRA factor, so a text-encoder LoRA must be one too
            for _, module in lora_factors(model):
                module.weight.requires_grad_(True)
    return file


def unload_lora(*models: torch.nn.Module | None) -> None:
    """Remove every LoRA layer from ``models`` (``None`` entries ignored), restoring the base layers."""
    for model in models:
        if model is None:
            continue
        if hasattr(model, "unload_lora"):  # diffusers models
            model.unload_lora()
            continue
        recurse_remove_peft_layers(model)
        if getattr(model, "peft_config", None) is not None:
            del model.peft_config
            model._hf_peft_config_loaded = None


def _fill_adapters(file: Path, unet, text_encoder, adapter_name: str, text_encoder_2=None) -> None:
    state = load_file(file)
    parts = {
        "unet": (unet, convert_unet_state_dict_to_peft),
        "text_encoder": (text_encoder, convert_state_dict_to_peft),
    }
    if text_encoder_2 is not None or any(k.startswith("text_encoder_2.") for k in state):
        parts["text_encoder_2"] = (text_encoder_2, convert_state_dict_to_peft)
    for prefix, (model, convert) in parts.items():
        own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if (model is None) != (not own):
            trained = "holds" if own else "does not hold"
            raise ConfigError(
                f"'{file}' {trained} a {prefix} LoRA and this run differs; use the same "
                "--train_text_encoder setting as the run that wrote it."
            )
        if model is None:
            continue
        result = set_peft_model_state_dict(model, convert(own), adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        expected = {f"{name}.weight" for name, _ in lora_factors(model)}
        missing = [k for k in (getattr(result, "missing_keys", None) or []) if k in expected]
        if unexpected or missing:
            raise ConfigError(
                f"'{file}' does not fit this run's {prefix} LoRA ({len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors); use the same --rank as the run that wrote it."
            )
