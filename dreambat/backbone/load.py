"""Loading a Stable Diffusion backbone from a local folder or the Hugging Face cache, offline.

:func:`resolve_backbone` runs before any work starts and turns a bad ``--pretrained_model_name_or_path``
into a :class:`ModelNotFoundError` that says what was looked for and how to fix it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import ModelNotFoundError

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Backbone:
    """The five components DreamBooth-LoRA needs, loaded and frozen."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    path: Path

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """The image size the UNet was built for (sample_size is in latent pixels)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def _could_be_hub_id(name: str) -> bool:
    """``org/name`` or ``name``: what a hub id looks like (a relative path may too)."""
    return re.fullmatch(r"[\w][\w.-]*(/[\w][\w.-]*)?", name) is not None


def _check_folder(folder: Path) -> Path:
    missing = [sub for sub in REQUIRED_SUBFOLDERS if not (folder / sub).is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"'{folder}' is not a diffusers Stable Diffusion folder: missing subfolder(s) "
            f"{', '.join(missing)}. Pass a folder saved with `pipeline.save_pretrained(...)` "
            "(it holds model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), "
            "or write a tiny offline one with `dreambat make-backbone FOLDER`."
        )
    return folder


def resolve_backbone(name_or_path: str, revision: str | None = None) -> Path:
    """The local folder of a backbone, without touching the network.

    Args:
        name_or_path: a diffusers folder, or a hub id (``org/name``) present in the local
            Hugging Face cache.
        revision: branch, tag or commit of a cached hub id.

    Raises:
        ModelNotFoundError: the folder does not exist or is incomplete, or the hub id is not
            cached; the message says which and what to do.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise ModelNotFoundError(
                f"--pretrained_model_name_or_path '{name_or_path}' is a file; "
                "pass the diffusers folder that contains model_index.json."
            )
        return _check_folder(candidate)
    if not _could_be_hub_id(name_or_path):
        raise ModelNotFoundError(
            f"Backbone folder '{name_or_path}' does not exist. Check the path, or write a tiny "
            f"offline backbone there with `dreambat make-backbone {name_or_path}`."
        )
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name_or_path, revision=revision, local_files_only=True)
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        raise ModelNotFoundError(
            f"'{name_or_path}' is neither a local folder nor a model in your Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). dreambat never downloads: "
            f"fetch it once where the network is available (`hf download {name_or_path}`), "
            "or pass a local diffusers folder."
        ) from exc
    return _check_folder(Path(folder))


def native_resolution(backbone_path: str | Path) -> int:
    """The backbone's native image size (UNet sample_size x VAE factor) from its configs only."""
    folder = Path(backbone_path)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def load_backbone(
    name_or_path: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load and freeze the components of a Stable Diffusion backbone (see :func:`resolve_backbone`)."""
    folder = resolve_backbone(name_or_path, revision)
    common = {"local_files_only": True}
    weights = {**common, "variant": variant, "torch_dtype": dtype}
    backbone = Backbone(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **weights),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **weights),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **weights),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **common),
        path=folder,
    )
    for model in (backbone.unet, backbone.vae, backbone.text_encoder):
        model.requires_grad_(False)
        model.eval()
    return backbone
