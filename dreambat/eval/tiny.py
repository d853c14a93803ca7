"""Tiny offline evaluators with the real ones' file layout, for tests and the demo.

- :func:`write_tiny_dino` writes a transformers ``ViTModel`` folder (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json``) laid out like ``facebook/dino-vits16``;
  ``DinoEncoder.load(folder)`` reads it through the same ``AutoModel`` call as the real model.
- :func:`write_tiny_clip` writes an open_clip model-config JSON and a ``.safetensors`` checkpoint;
  ``ClipEncoder.load(config_json, checkpoint)`` takes the same path as ``ViT-B-32`` plus a local
  checkpoint file. It also writes ``open_clip_config.json`` so ``local-dir:FOLDER`` loads it.
  The tokenizer is open_clip's ``SimpleTokenizer``, whose vocabulary ships inside the package.

Weights are seeded and random: the scores they give test the plumbing, not image quality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_CLIP_NAME = "dreambat-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_CLIP_CHECKPOINT = "open_clip_model.safetensors"


@dataclass(frozen=True)
class TinyEvaluators:
    """Where :func:`write_tiny_evaluators` put things; pass these as ``--dino_model``, ``--clip_model``, ``--clip_pretrained``."""

    dino_model: Path
    clip_model: Path
    clip_pretrained: Path


def write_tiny_dino(folder: str | Path, *, seed: int = 0, image_size: int = 64, patch_size: int = 16) -> Path:
    """A ViT (hidden 32, 2 layers, ``image_size`` px input) saved as a transformers folder.

    The folder also holds a ``ViTImageProcessor`` with ImageNet statistics, as the real DINO folders
    do; :class:`~dreambat.eval.encoders.DinoEncoder` applies the protocol's own preprocessing
    (resize 256/224 of ``image_size`` bicubic, centre crop) whatever the processor says.
    """
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = Path(folder)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def write_tiny_clip(folder: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """A tiny open_clip CLIP (width 32, 2+2 layers, 64 px) -> ``(config_json, checkpoint)`` in ``folder``."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}, indent=2) + "\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(**TINY_CLIP_CONFIG)
    checkpoint = folder / TINY_CLIP_CHECKPOINT
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, checkpoint)
    return config_path, checkpoint


def write_tiny_evaluators(folder: str | Path, *, seed: int = 0) -> TinyEvaluators:
    """Both tiny evaluators under ``folder/dino`` and ``folder/clip``."""
    folder = Path(folder)
    dino = write_tiny_dino(folder / "dino", seed=seed)
    clip_config, clip_checkpoint = write_tiny_clip(folder / "clip", seed=seed)
    return TinyEvaluators(dino_model=dino, clip_model=clip_config, clip_pretrained=clip_checkpoint)
