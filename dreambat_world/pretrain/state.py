"""Pretraining state on disk: the resumable checkpoint, the run's tokenizer, backbone folders in and out."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import EMAModel

from dreambat.backbone.tiny import build_tiny_components
from dreambat.errors import ConfigError, DataError

from ..synthetic import VOCABULARY
from .config import PretrainConfig

class Checkpoint:
    """One file ``work_dir/checkpoint.pt`` holding the whole training state, written atomically."""

    def __init__(self, work_dir: str | Path):
        self.path = Path(work_dir) / "checkpoint.pt"

    def load(self) -> dict[str, Any] | None:
        return torch.load(self.path, weights_only=False, map_location="cpu") if self.path.is_file() else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def save_backbone(components: dict[str, Any], folder: str | Path,
                  half: Sequence[str] = ("unet", "vae")) -> Path:
    """Save the components as a diffusers Stable Diffusion folder (safetensors).

    The models named in ``half`` are stored as float16 to keep the committed folder small;
    diffusers loads them back into float32 modules (``from_pretrained`` with no dtype, and
    :func:`~dreambat.backbone.load.load_backbone`). The text encoder stays float32 because
    transformers would otherwise load it as float16 next to a float32 UNet.
    """
    stored = {name: copy.deepcopy(model).half() if name in half else model
              for name, model in components.items()
              if name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
    pipe = StableDiffusionPipeline(**stored, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def export_checkpoint(cfg: PretrainConfig, output_dir: str | Path) -> dict[str, Any]:
    """Save the EMA weights of the checkpoint in ``cfg.work_dir`` as a backbone folder, without
    training or reading the pool (to sample a run that is still going, or one that was stopped).

    Returns ``{"unet_steps", "scaling_factor", "output_dir"}``.
    """
    state = Checkpoint(cfg.work_dir).load()
    if not state or "ema_unet" not in state or "scaling_factor" not in state:
        raise DataError(f"{cfg.work_dir} holds no denoiser checkpoint to export (checkpoint.pt with EMA "
                        "weights and a latent scale); train with scripts/pretrain_world_backbone.py first.")
    components = build_tiny_components(cfg.size, seed=cfg.seed, words=VOCABULARY)
    components["tokenizer"] = run_tokenizer(Path(cfg.work_dir), components["tokenizer"])
    components["vae"].load_state_dict(state["vae"])
    components["vae"].register_to_config(scaling_factor=state["scaling_factor"])
    for name, key in (("unet", "ema_unet"), ("text_encoder", "ema_text")):
        ema = EMAModel(components[name].parameters())
        ema.load_state_dict(state[key])
        ema.copy_to(components[name].parameters())
    save_backbone(components, output_dir)
    return {"unet_steps": state["step"], "scaling_factor": state["scaling_factor"], "output_dir": str(output_dir)}


def initial_state(components: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """Load the backbone in ``folder`` into ``components`` and return the state that starts the
    denoiser phase from it (the VAE counts as trained).

    The weights are loaded as float32 (a saved backbone stores its UNet and VAE as float16). The
    folder's tokenizer replaces the built one: the text encoder's embeddings are indexed by it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = str(folder)
    common = {"local_files_only": True}
    loaded = {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32, **common),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32, **common),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder",
                                                      dtype=torch.float32, **common),
    }
    for name, model in loaded.items():
        try:
            components[name].load_state_dict(model.state_dict())
        except RuntimeError as error:
            raise ConfigError(f"init_from {folder!r}: its {name} does not match the configured size "
                              f"({str(error).splitlines()[0]}); pass the TinySize it was trained with.") from None
    components["tokenizer"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common)
    # The checkpoint carries the VAE (nothing trains it again) and the latent scale the UNet knows.
    return {"vae": components["vae"].state_dict(), "vae_done": True, "vae_step": 0,
            "scaling_factor": float(loaded["vae"].config.scaling_factor), "init_from": folder}


def run_tokenizer(work: Path, built: Any) -> Any:
    """The tokenizer of the run in ``work``: the one saved when it started, else ``built`` (saved now).

    The text encoder learns one embedding per token id, so a resumed run must tokenize exactly
    as the run it continues did, even if the tokenizer builder has changed in between.
    """
    from transformers import CLIPTokenizer

    folder = work / "tokenizer"
    if (folder / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(folder)
    built.save_pretrained(folder)
    return built
