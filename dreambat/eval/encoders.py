"""The two evaluators of the DreamBench protocol behind one small interface.

- :class:`DinoEncoder`: a self-supervised ViT loaded with ``transformers.AutoModel`` (default
  ``facebook/dino-vits16``, ViT-S/16); the embedding is the CLS token of ``last_hidden_state``.
- :class:`ClipEncoder`: an ``open_clip`` model (default ``ViT-B-32`` with the ``openai`` weights);
  image and text embeddings from ``encode_image`` / ``encode_text`` (the projected features).

Both expose ``embed_images(list[PIL.Image]) -> [N, D]`` (``ClipEncoder`` also ``embed_texts``):
float32 CPU tensors, **not** normalised (the metrics normalise), computed in eval mode under
``torch.inference_mode`` in batches of ``batch_size`` on ``device``, so the same images give the
same embeddings whatever the batching (up to float rounding).

Nothing is ever downloaded. Model names resolve to local folders/files or to the user's Hugging
Face cache; anything else raises :class:`ModelNotFoundError` saying how to fetch it once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from ..errors import ConfigError, ModelNotFoundError
from .constants import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_DEVICE,
    DEFAULT_DINO_MODEL,
    DEFAULT_EVAL_BATCH_SIZE,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINO's evaluation preprocessing: resize the short side to 256, centre-crop 224 (ratio kept for
# other input sizes).
DINO_RESIZE_RATIO = 256 / 224


def resolve_device(device: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _embed_in_batches(
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor],
    forward: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Apply ``forward`` to ``transform``-ed images, ``batch_size`` at a time -> ``[N, D]`` float32 CPU."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(image.convert("RGB")) for image in images[start:start + batch_size]])
            chunks.append(forward(batch.to(device)).float().cpu())
    if not chunks:
        raise ValueError("embed_images got no images.")
    return torch.cat(chunks)


def dino_transform(image_size: int = 224) -> transforms.Compose:
    """DINO preprocessing: short side to ``256/224 * image_size`` (bicubic), centre crop, ImageNet norm.

    The checkpoint's own ``preprocessor_config.json`` is deliberately not used: for
    ``facebook/dino-vits16`` it is a plain bilinear resize to 224, not the protocol's.
    """
    return transforms.Compose([
        transforms.Resize(round(image_size * DINO_RESIZE_RATIO), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class DinoEncoder:
    """DINO CLS embeddings ``[N, hidden]`` (384 for ViT-S/16) of a ``transformers`` ViT."""

    def __init__(self, model: torch.nn.Module, *, image_size: int, device: torch.device,
                 batch_size: int = DEFAULT_EVAL_BATCH_SIZE, name: str = "dino"):
        self.model = model.eval().to(device)
        self.transform = dino_transform(image_size)
        self.device = device
        self.batch_size = batch_size
        self.name = name

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_DINO_MODEL, *, device: str | torch.device = DEFAULT_DEVICE,
             batch_size: int = DEFAULT_EVAL_BATCH_SIZE, revision: str | None = None) -> DinoEncoder:
        """Load a ViT from a local folder or the Hugging Face cache (``local_files_only``)."""
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(name_or_path, revision=revision, local_files_only=True).float()
        except (OSError, ValueError) as exc:
            if Path(name_or_path).expanduser().is_dir() or name_or_path.startswith((".", "/", "~")):
                raise ModelNotFoundError(
                    f"DINO model folder '{name_or_path}' does not exist or holds no transformers model "
                    f"(config.json and weights); pass --dino_model with such a folder or a cached hub id "
                    f"such as {DEFAULT_DINO_MODEL}."
                ) from exc
            raise ModelNotFoundError(
                f"DINO model '{name_or_path}' is neither a local transformers folder nor in your "
                f"Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}). "
                f"dreambat never downloads: run `hf download {DEFAULT_DINO_MODEL}` once where the "
                "network is available, or pass --dino_model with a folder holding config.json and "
                "the weights."
            ) from exc
        image_size = int(getattr(model.config, "image_size", 224))
        return cls(model, image_size=image_size, device=resolve_device(device), batch_size=batch_size,
                   name=f"dino:{name_or_path}")

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, D]`` CLS tokens of ``last_hidden_state`` (before any pooler or head)."""
        return _embed_in_batches(
            images, self.transform,
            lambda pixels: self.model(pixel_values=pixels).last_hidden_state[:, 0],
            self.batch_size, self.device,
        )


def _open_clip_name(model: str) -> str:
    """An open_clip model name; a path to a model-config JSON is registered under its file stem."""
    import open_clip

    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"open_clip model config '{model}' does not exist; check --clip_model.")
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        if path.stem not in open_clip.list_models():
            raise ConfigError(
                f"'{model}' is not an open_clip model config: it needs the keys embed_dim, "
                "vision_cfg and text_cfg (see open_clip/model_configs/ViT-B-32.json)."
            )
        return path.stem
    if not model.startswith(("hf-hub:", "local-dir:")) and model not in open_clip.list_models():
        raise ModelNotFoundError(
            f"Unknown open_clip model '{model}'. Use a name from open_clip.list_models() (e.g. "
            f"{DEFAULT_CLIP_MODEL}), a model-config JSON file, or 'local-dir:FOLDER'."
        )
    return model


class ClipEncoder:
    """open_clip image ``[N, D]`` and text ``[N, D]`` embeddings (``D`` = 512 for ViT-B-32)."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, *,
                 device: torch.device, batch_size: int = DEFAULT_EVAL_BATCH_SIZE, name: str = "clip"):
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.name = name

    @classmethod
    def load(cls, model: str = DEFAULT_CLIP_MODEL, pretrained: str | None = DEFAULT_CLIP_PRETRAINED, *,
             device: str | torch.device = DEFAULT_DEVICE, batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
             ) -> ClipEncoder:
        """Load an open_clip model with its evaluation transform and tokenizer, offline.

        Args:
            model: an open_clip name (``ViT-B-32``), a path to a model-config JSON (registered
                under its file stem), or ``local-dir:FOLDER`` / ``hf-hub:org/name`` (cached).
            pretrained: a pretrained tag of that model (``openai``, ``laion2b_s34b_b79k``: read
                from the Hugging Face cache) or a local checkpoint file (.pt/.bin/.safetensors).
                Ignored for ``local-dir:``/``hf-hub:`` names, required otherwise.
        """
        import open_clip

        name = _open_clip_name(model)
        kwargs: dict = {}
        fetch = "the model"
        if name.startswith(("hf-hub:", "local-dir:")):
            pretrained = None  # the folder or repo names its own weights
        else:
            if not pretrained:
                raise ConfigError(
                    f"--clip_pretrained is empty for '{model}': random CLIP weights give meaningless "
                    f"scores. Pass a tag ({DEFAULT_CLIP_PRETRAINED}, laion2b_s34b_b79k, ...) or a checkpoint file."
                )
            tag = open_clip.get_pretrained_cfg(name, pretrained)
            fetch = f"`hf download {tag['hf_hub'].strip('/')}`" if tag.get("hf_hub") else (
                f"`python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{pretrained}')\"`")
            if tag:
                kwargs["force_quick_gelu"] = bool(tag.get("quick_gelu", False))  # as the tag was trained
            elif not Path(pretrained).expanduser().is_file():
                raise ModelNotFoundError(
                    f"--clip_pretrained '{pretrained}' is neither a pretrained tag of '{name}' "
                    f"({', '.join(open_clip.list_pretrained_tags_by_model(name)[:5]) or 'none'}, ...) nor "
                    "an existing checkpoint file."
                )
            else:
                pretrained = str(Path(pretrained).expanduser())
            kwargs["pretrained"] = pretrained
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu", **kwargs)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"Could not load open_clip '{model}' with pretrained '{pretrained}' offline ({exc}). "
                f"dreambat never downloads: fetch it once where the network is available ({fetch}), "
                "or pass --clip_pretrained with a local checkpoint file."
            ) from exc
        return cls(clip, preprocess, open_clip.get_tokenizer(name), device=resolve_device(device),
                   batch_size=batch_size, name=f"clip:{model}:{pretrained or ''}")

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, D]`` ``encode_image`` features of ``N`` images (open_clip's own eval transform)."""
        return _embed_in_batches(images, self.preprocess, self.model.encode_image, self.batch_size, self.device)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` ``encode_text`` features of ``N`` prompts (truncated to the context length)."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
                chunks.append(self.model.encode_text(tokens).float().cpu())
        if not chunks:
            raise ValueError("embed_texts got no texts.")
        return torch.cat(chunks)
