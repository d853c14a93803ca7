"""CLIP retrieval as a selection baseline: candidates ranked by their similarity to the subject.

Custom Diffusion picks real regularisation images from LAION by CLIP similarity; a user without
ALBAT would reach for the same. :class:`ClipSimilarity` scores a candidate by the cosine between
its open_clip image embedding and the normalised mean embedding of the subject photos, through
the same streaming, resumable, multi-process run as ALBAT's scores (``--selection clip``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..albat.scorer import ScoredBatch
from ..data.transforms import load_rgb
from ..eval.encoders import ClipEncoder


class ClipSimilarity:
    """Cosine similarity of candidate images to the centroid of the subject photos' CLIP embeddings."""

    def __init__(self, encoder: ClipEncoder, subject_images: Sequence[Path]):
        self.encoder = encoder
        photos = [load_rgb(path) for path in subject_images]
        self.centroid = F.normalize(F.normalize(encoder.embed_images(photos).float(), dim=1).mean(0), dim=0)

    def score_batch_split(self, images: Sequence[Image.Image], *, path: str = "fast") -> ScoredBatch:
        """``[B]`` float64 cosines of ``images`` to the subject centroid (no split: retrieval is exact)."""
        embeddings = F.normalize(self.encoder.embed_images(list(images)).float(), dim=1)
        return ScoredBatch((embeddings @ self.centroid).double())

    def describe(self) -> dict:
        return {"method": "clip", "encoder": self.encoder.name, "embedding_dim": int(self.centroid.numel())}


def collate_images(samples) -> list[Image.Image]:
    """Backbone candidates as the list of their images (CLIP applies its own preprocessing)."""
    return [sample.image for sample in samples]


def load_clip(model: str, pretrained: str, device: torch.device) -> ClipEncoder:
    return ClipEncoder.load(model, pretrained, device=device)
