"""The world's DINO: a small transformers ViT trained to recognise an object design across photos.

DreamBench uses DINO to ask "is this the same subject?", insensitive to background and pose. The
world can render one design twice in different poses, sizes and backgrounds, so the ViT is trained
instance-discriminatively at the *design* level: SimCLR's InfoNCE over a batch of random designs,
each seen in two photos (plus random crops of the :class:`~dreambat.eval.encoders.DinoEncoder`
resize), directly on the CLS token that ``DinoEncoder`` returns. The world subjects' designs are
never drawn in training, so they are measured as unseen identities.

Folder: what :func:`dreambat.eval.tiny.write_tiny_dino` writes (``config.json``,
``model.safetensors`` in float16, ``preprocessor_config.json``) plus ``training_report.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreambat.eval.encoders import DINO_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD

from .classifiers import images_to_tensor
from .evaluator_training import (
    TRAIN_SEED,
    TrainBudget,
    degrade,
    info_nce,
    train_within_budget,
)
from .subjects import WORLD_SUBJECTS, matches_any_subject, subject_photos
from .synthetic import Subject, random_design, render, subject_in_scene

logger = logging.getLogger(__name__)

DINO_TRAIN_SEED = TRAIN_SEED + 2
IMAGE_SIZE = 32
TEMPERATURE = 0.1


def world_vit_config():
    """A 3-layer, 64-wide ViT on 32 px inputs with 4 px patches (64 patches + CLS)."""
    from transformers import ViTConfig

    return ViTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128,
                     image_size=IMAGE_SIZE, patch_size=4)


def design_pairs(n: int, rng: np.random.Generator) -> tuple[list, list]:
    """``n`` random designs (never a world subject's), each photographed twice -> two image lists."""
    first, second = [], []
    for _ in range(n):
        design = random_design(rng)
        while matches_any_subject(design):
            design = random_design(rng)
        subject = Subject("design", design.shape, design)
        for views in (first, second):
            distractors = int(rng.random() < 0.15)
            views.append(render(subject_in_scene(subject, rng, distractors=distractors), IMAGE_SIZE, rng))
    return first, second


def _views(images, generator: torch.Generator) -> torch.Tensor:
    """PIL images -> ``[N, 3, 32, 32]``: DinoEncoder's resize (32 -> 37 px) with a random 32 px crop
    instead of the centre one, random flips, blur/noise, ImageNet normalisation."""
    pixels = degrade(images_to_tensor(images, IMAGE_SIZE), generator)
    big = round(IMAGE_SIZE * DINO_RESIZE_RATIO)
    pixels = F.interpolate(pixels, size=(big, big), mode="bicubic", align_corners=False)
    offsets = torch.randint(0, big - IMAGE_SIZE + 1, (pixels.shape[0], 2), generator=generator)
    crops = torch.stack([p[:, y:y + IMAGE_SIZE, x:x + IMAGE_SIZE] for p, (y, x) in zip(pixels, offsets.tolist())])
    flip = torch.rand(crops.shape[0], generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((crops + 1) / 2 - mean) / std


def train_dino(folder: str | Path, budget: TrainBudget = TrainBudget()) -> dict:
    """Train the world ViT within ``budget`` and save it as a transformers folder in ``folder``.

    Returns ``{"steps", "seconds", "final_loss", "params"}``.
    """
    from transformers import ViTImageProcessor, ViTModel

    torch.manual_seed(budget.seed)
    generator = torch.Generator().manual_seed(budget.seed)
    rng = np.random.default_rng([DINO_TRAIN_SEED, budget.seed])
    model = ViTModel(world_vit_config())

    def loss_at(step: int) -> torch.Tensor:
        first, second = design_pairs(budget.batch_size, rng)
        cls = model(pixel_values=_views(first + second, generator)).last_hidden_state[:, 0]
        return info_nce(cls[:budget.batch_size], cls[budget.batch_size:], TEMPERATURE)

    log = train_within_budget(model, loss_at, budget, "dino")
    folder = Path(folder)
    model.half().save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=3,
                      image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(folder)
    return log


def measure_dino(folder: str | Path, subjects: tuple[Subject, ...] = WORLD_SUBJECTS) -> dict[str, float]:
    """Same- vs different-subject cosines of held-out photos, and nearest-neighbour identification.

    Embeds each subject's ``"heldout"`` and ``"train"`` photos through ``DinoEncoder``. Reports the
    mean cosine over pairs of held-out photos of the same subject and of different subjects, and
    the fraction of held-out photos whose nearest train photo shows the same subject.
    """
    from dreambat.eval.encoders import DinoEncoder

    encoder = DinoEncoder.load(str(folder), device="cpu")
    held, train, held_ids, train_ids = [], [], [], []
    for k, subject in enumerate(subjects):
        photos = subject_photos(subject, "heldout")
        held += photos
        held_ids += [k] * len(photos)
        photos = subject_photos(subject, "train")
        train += photos
        train_ids += [k] * len(photos)
    h = F.normalize(encoder.embed_images(held), dim=-1)
    t = F.normalize(encoder.embed_images(train), dim=-1)
    hid, tid = torch.tensor(held_ids), torch.tensor(train_ids)
    sims = h @ h.T
    same = (hid[:, None] == hid[None, :]) & ~torch.eye(len(hid), dtype=torch.bool)
    different = hid[:, None] != hid[None, :]
    nearest = tid[(h @ t.T).argmax(dim=1)]
    return {"subjects": len(subjects), "heldout_photos": len(held),
            "same_subject_cosine": float(sims[same].mean()), "different_subject_cosine": float(sims[different].mean()),
            "nn_identification": float((nearest == hid).float().mean())}
