"""CLIP retrieval as a selection baseline: candidates ranked by their similarity to one query.

Custom Diffusion picks real regularisation images from LAION by CLIP similarity; a user without
ALBAT would reach for the same. :class:`ClipSimilarity` scores a candidate by the cosine between
its open_clip image embedding and a query embedding, through the same streaming, resumable,
multi-process run as ALBAT's scores (``--selection clip``). The query (``--clip_query``) is one of
:data:`CLIP_QUERIES`:

* ``image``: the normalised mean image embedding of the subject photos (the nearest images to the
  subject);
* ``text``: the text embedding of a prompt such as ``"a photo of a dog"`` (Custom Diffusion's real
  prior: images of the class, trained with their own captions).
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

IMAGE_QUERY, TEXT_QUERY = "image", "text"
CLIP_QUERIES = (IMAGE_QUERY, TEXT_QUERY)
"""What ``--selection clip`` ranks candidates by closeness to: the subject photos, or a prompt."""


class ClipSimilarity:
    """Cosine similarity of candidate images to one query embedding.

    Build it with :meth:`of_subject` (image query) or :meth:`of_prompt` (text query).

    Args:
        encoder: the open_clip encoder of the candidates (and of the query).
        query: ``[D]`` unit-norm query embedding.
        kind: :data:`IMAGE_QUERY` or :data:`TEXT_QUERY` (for the report).
        prompt: the text of a text query.
    """

    def __init__(self, encoder: ClipEncoder, query: torch.Tensor, *, kind: str = IMAGE_QUERY,
                 prompt: str | None = None):
        if kind not in CLIP_QUERIES:
            raise ValueError(f"kind must be one of {CLIP_QUERIES}, got {kind!r}")
        self.encoder = encoder
        self.query = query.float()
        self.kind = kind
        self.prompt = prompt

    @classmethod
    def of_subject(cls, encoder: ClipEncoder, subject_images: Sequence[Path]) -> ClipSimilarity:
        """Query: the normalised centroid of the subject photos' normalised image embeddings."""
        photos = [load_rgb(path) for path in subject_images]
        centroid = F.normalize(encoder.embed_images(photos).float(), dim=1).mean(0)
        return cls(encoder, F.normalize(centroid, dim=0), kind=IMAGE_QUERY)

    @classmethod
    def of_prompt(cls, encoder: ClipEncoder, prompt: str) -> ClipSimilarity:
        """Query: the normalised text embedding of ``prompt``."""
        return cls(encoder, F.normalize(encoder.embed_texts([prompt])[0].float(), dim=0), kind=TEXT_QUERY,
                   prompt=prompt)

    def score_batch_split(self, images: Sequence[Image.Image], *, path: str = "fast") -> ScoredBatch:
        """``[B]`` float64 cosines of ``images`` to the query (no split: retrieval is exact)."""
        embeddings = F.normalize(self.encoder.embed_images(list(images)).float(), dim=1)
        return ScoredBatch((embeddings @ self.query).double())

    def describe(self) -> dict:
        described = {"method": "clip", "encoder": self.encoder.name, "embedding_dim": int(self.query.numel()),
                     "query": self.kind}
        return described | ({"query_prompt": self.prompt} if self.kind == TEXT_QUERY else {})


def similarity_scorer(encoder: ClipEncoder, query: str, *, subject_images: Sequence[Path] = (),
                      prompt: str | None = None) -> ClipSimilarity:
    """The :class:`ClipSimilarity` of ``query`` (:data:`CLIP_QUERIES`): to ``subject_images`` or ``prompt``."""
    if query == TEXT_QUERY:
        if not prompt:
            raise ValueError("A text query needs a prompt.")
        return ClipSimilarity.of_prompt(encoder, prompt)
    return ClipSimilarity.of_subject(encoder, subject_images)


def collate_images(samples) -> list[Image.Image]:
    """Backbone candidates as the list of their images (CLIP applies its own preprocessing)."""
    return [sample.image for sample in samples]


def load_clip(model: str, pretrained: str, device: torch.device) -> ClipEncoder:
    return ClipEncoder.load(model, pretrained, device=device)
