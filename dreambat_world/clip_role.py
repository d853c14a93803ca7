"""The world's CLIP: a small open_clip model trained contrastively on the world's captioned scenes.

Real CLIP's 49,408-token embedding table alone would weigh several MB, so the text tower uses the
world's own CLIP-format BPE tokenizer (:func:`dreambat.backbone.tokenizer.build_clip_tokenizer`
with the world's caption words). open_clip reads it from the model folder when the folder is
loaded as ``local-dir:FOLDER`` (``text_cfg.hf_tokenizer_name`` makes it use the folder's
tokenizer files); its end-of-text token has the largest id, so open_clip's ``argmax`` pooling
finds it as with the real vocabulary.

Folder: ``open_clip_config.json`` (``{"model_cfg": ...}``), ``open_clip_model.safetensors``
(float16), tokenizer files (``vocab.json``, ``merges.txt``, ...), ``training_report.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .evaluator_training import (
    HELDOUT_SEED,
    TRAIN_SEED,
    TrainBudget,
    degrade,
    info_nce,
    retrieval_scores,
    train_within_budget,
)
from .evaluators import CLIP_CHECKPOINT
from .subjects import WORLD_SUBJECTS
from .synthetic import VOCABULARY, backbone_record

logger = logging.getLogger(__name__)

CLIP_TRAIN_SEED = TRAIN_SEED + 1
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def world_clip_config(vocab_size: int) -> dict:
    """The open_clip ``model_cfg`` of the world CLIP (32 px ViT with 4 px patches, 64-d embeddings)."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 4},
        "text_cfg": {"context_length": 32, "vocab_size": vocab_size, "width": 64, "heads": 2, "layers": 2,
                     "hf_tokenizer_name": "dreambat-world-clip"},
    }


def world_words() -> list[str]:
    """Caption words plus the subjects' class words and DreamBench-style prompt fillers."""
    extra = ["sks", "wearing", "next", "to", "beside", "is", "made", "colored", "texture"]
    return sorted({*VOCABULARY, *(s.class_word for s in WORLD_SUBJECTS), *extra})


def write_clip_folder(folder: str | Path) -> dict:
    """Write the tokenizer and ``open_clip_config.json`` into ``folder``; returns the model config."""
    from dreambat.backbone.tokenizer import build_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(world_words())
    tokenizer.save_pretrained(folder)
    config = world_clip_config(len(tokenizer))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}, indent=2) + "\n")
    return config


def _pixels(images, generator: torch.Generator | None) -> torch.Tensor:
    """PIL images -> ``[N, 3, 32, 32]`` normalised as open_clip's eval transform does."""
    from .classifiers import images_to_tensor

    pixels = images_to_tensor(images, 32)
    if generator is not None:
        pixels = degrade(pixels, generator)
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    return ((pixels + 1) / 2 - mean) / std


def train_clip(folder: str | Path, budget: TrainBudget = TrainBudget()) -> dict:
    """Train the world CLIP on captioned backbone-style scenes and save it into ``folder``.

    Returns ``{"steps", "seconds", "final_loss", "params"}``.
    """
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    config = write_clip_folder(folder)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    torch.manual_seed(budget.seed)
    generator = torch.Generator().manual_seed(budget.seed)
    model = open_clip.model.CLIP(**config)

    def loss_at(step: int) -> torch.Tensor:
        first = budget.seed * 10_000_000 + (step - 1) * budget.batch_size
        records = [backbone_record(i, CLIP_TRAIN_SEED, 32) for i in range(first, first + budget.batch_size)]
        image_features = model.encode_image(_pixels([r["image"] for r in records], generator))
        text_features = model.encode_text(tokenizer([r["caption"] for r in records]))
        return info_nce(image_features, text_features, 1 / model.logit_scale.exp())

    def clamp_temperature() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))

    log = train_within_budget(model, loss_at, budget, "clip", after_step=clamp_temperature)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, folder / CLIP_CHECKPOINT)
    return log


def measure_clip(folder: str | Path, n: int = 256, seed: int = HELDOUT_SEED) -> dict[str, float]:
    """Image<->caption retrieval among ``n`` held-out pairs, loaded through ``ClipEncoder``.

    ``a`` is images and ``b`` captions: ``a_to_b_top1`` is image->text top-1 accuracy.
    """
    from dreambat.eval.encoders import ClipEncoder

    encoder = ClipEncoder.load(f"local-dir:{Path(folder)}", None, device="cpu", batch_size=128)
    records = [backbone_record(i, seed, 32) for i in range(n)]
    return retrieval_scores(encoder.embed_images([r["image"] for r in records]),
                            encoder.embed_texts([r["caption"] for r in records]))
