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
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import ModelNotFoundError

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_SUBFOLDERS = ("text_encoder_2", "tokenizer_2")
"""What an SDXL folder has besides :data:`REQUIRED_SUBFOLDERS`."""


@dataclass
class Backbone:
    """The components DreamBooth-LoRA needs, loaded and frozen: five for Stable Diffusion 1.x/2.x,
    and SDXL's second text encoder and tokenizer where the folder has them."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    path: Path
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        """The text encoder, and SDXL's second one."""
        return (self.text_encoder, self.text_encoder_2) if self.is_sdxl else (self.text_encoder,)

    @property
    def models(self) -> tuple[torch.nn.Module, ...]:
        """The networks: UNet, VAE and the text encoder(s)."""
        return (self.unet, self.vae, *self.text_encoders)

    def to(self, device: torch.device | str) -> Backbone:
        for model in self.models:
            model.to(device)
        return self

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


def is_sdxl_folder(folder: str | Path) -> bool:
    """Whether a diffusers folder holds an SDXL pipeline: its ``model_index.json`` names one, or
    lists a second text encoder."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return (Path(folder) / "text_encoder_2").is_dir()
    config = json.loads(index.read_text())
    return "XL" in str(config.get("_class_name", "")) or "text_encoder_2" in config


def _check_folder(folder: Path) -> Path:
    required = REQUIRED_SUBFOLDERS + (SDXL_SUBFOLDERS if is_sdxl_folder(folder) else ())
    missing = [sub for sub in required if not (folder / sub).is_dir()]
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


def resolve_vae(name_or_path: str) -> Path:
    """The local folder of a standalone VAE (``AutoencoderKL.save_pretrained``: config.json and
    weights), or of a cached hub id, offline; a clear :class:`ModelNotFoundError` otherwise."""
    candidate = Path(name_or_path).expanduser()
    if not candidate.exists() and _could_be_hub_id(name_or_path):
        from huggingface_hub import snapshot_download

        try:
            candidate = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception as exc:  # huggingface_hub raises several types for "not cached"
            raise ModelNotFoundError(
                f"--pretrained_vae_model_name_or_path '{name_or_path}' is neither a local folder nor a model in "
                f"your Hugging Face cache. dreambat never downloads: fetch it once (`hf download {name_or_path}`) "
                "or pass a local folder."
            ) from exc
    if not (candidate / "config.json").is_file():
        raise ModelNotFoundError(
            f"--pretrained_vae_model_name_or_path '{name_or_path}' is not a VAE folder: it needs the config.json "
            "and weights that `AutoencoderKL.save_pretrained(...)` writes."
        )
    return candidate


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
    vae: str | None = None,
) -> Backbone:
    """Load and freeze the components of a Stable Diffusion or SDXL backbone (see
    :func:`resolve_backbone`); ``vae`` replaces the folder's VAE (``--pretrained_vae_model_name_or_path``,
    e.g. SDXL's fp16-safe one: see :func:`resolve_vae`)."""
    folder = resolve_backbone(name_or_path, revision)
    common = {"local_files_only": True}
    weights = {**common, "variant": variant, "torch_dtype": dtype}
    second = {}
    if is_sdxl_folder(folder):
        second = dict(
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", **weights),
            tokenizer_2=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", **common),
        )
    vae_source = {"pretrained_model_name_or_path": folder, "subfolder": "vae"}
    if vae is not None:
        vae_source = {"pretrained_model_name_or_path": resolve_vae(vae)}
    backbone = Backbone(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **weights),
        vae=AutoencoderKL.from_pretrained(**vae_source, **weights),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **weights),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **common),
        path=folder,
        **second,
    )
    for model in backbone.models:
        model.requires_grad_(False)
        model.eval()
    return backbone


def load_text_to_image_pipeline(folder: str | Path, *, dtype: torch.dtype = torch.float32, variant: str | None = None,
                                vae: str | None = None):
    """A sampling pipeline of a local backbone folder, offline: ``StableDiffusionXLPipeline`` for
    SDXL (no invisible watermark), ``StableDiffusionPipeline`` otherwise (no safety checker).
    ``vae`` replaces the folder's VAE as in :func:`load_backbone`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    common = {"dtype": dtype, "variant": variant, "local_files_only": True}
    if vae is not None:
        common["vae"] = AutoencoderKL.from_pretrained(resolve_vae(vae), torch_dtype=dtype, local_files_only=True)
    if is_sdxl_folder(folder):
        return StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False, **common)
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   **common)
