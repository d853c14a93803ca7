"""A caption–image consistency filter: CLIP's cosine between each candidate's image and its own caption.

Web pairs whose caption does not describe the image are the junk that an influence score ranked
by gradient size prefers (their loss, and so their gradient, is large). LAION itself was filtered
at a cosine of 0.28 with OpenAI's ViT-B/32; ``--min_clip_score`` applies the same test before any
candidate is scored, with the open_clip model of ``--clip_model`` (the world's CLIP-role encoder
on the mini-world). A candidate below the threshold is written to the manifest as ``skipped``
with reason ``caption_mismatch`` and counted in the report; every scored candidate keeps its
cosine in the record (``clip_score``), so a run can be re-thresholded without a new pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..albat import ManifestRecord, ManifestWriter
from ..data.records import sample_source
from ..data.shards import BackboneSample
from ..eval.encoders import ClipEncoder

SKIP_REASON = "caption_mismatch"


class CaptionFilter:
    """Keeps the candidates whose image–caption cosine is at least ``min_score``.

    Args:
        encoder: an open_clip encoder with image and text towers.
        min_score: the threshold on the cosine.
        batch_size: candidates embedded together.
    """

    def __init__(self, encoder: ClipEncoder, min_score: float, *, batch_size: int = 32) -> None:
        self.encoder, self.min_score, self.batch_size = encoder, float(min_score), batch_size
        self.scores: dict[int, float] = {}
        self.rejected = 0

    def cosines(self, samples: Sequence[BackboneSample]) -> list[float]:
        """The cosine of each sample's image embedding with its own caption's."""
        images = F.normalize(self.encoder.embed_images([s.image for s in samples]).float(), dim=1)
        texts = F.normalize(self.encoder.embed_texts([s.caption for s in samples]).float(), dim=1)
        return (images * texts).sum(dim=1).double().tolist()

    def source(self, sample: BackboneSample) -> dict[str, Any]:
        """What the manifest remembers of a candidate: its shard, caption and cosine."""
        return sample_source(sample) | {"clip_score": self.scores.get(sample.index)}

    def rejected_record(self, sample: BackboneSample) -> ManifestRecord:
        """The manifest's record of a candidate the filter keeps out."""
        return ManifestRecord(sample.index, sample.key, None, status="skipped", reason=SKIP_REASON,
                              source=self.source(sample))

    def split(self, samples: Sequence[BackboneSample]) -> tuple[list[BackboneSample], list[ManifestRecord]]:
        """The samples that pass, and a ``skipped`` record for each one that does not."""
        passing, rejected = [], []
        for start in range(0, len(samples), self.batch_size):
            chunk = list(samples[start:start + self.batch_size])
            for sample, cosine in zip(chunk, self.cosines(chunk)):
                self.scores[sample.index] = cosine
                if cosine >= self.min_score:
                    passing.append(sample)
                else:
                    rejected.append(self.rejected_record(sample))
        self.rejected += len(rejected)
        return passing, rejected

    def chunks(self, samples: Iterable[BackboneSample]) -> Iterator[list[BackboneSample]]:
        """``samples`` in lists of ``batch_size`` (the last one shorter)."""
        chunk: list[BackboneSample] = []
        for sample in samples:
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def stream(self, samples: Iterable[BackboneSample], writer: ManifestWriter) -> Iterator[BackboneSample]:
        """The passing samples of a stream, in order; the others go to ``writer`` as skipped records,
        a chunk at a time. Samples the writer already holds (a resumed run) pass through unembedded."""
        for chunk in self.chunks(samples):
            done = [sample.index in writer.done_indices for sample in chunk]
            passing, rejected = self.split([sample for sample, seen in zip(chunk, done) if not seen])
            writer.write(rejected)
            kept = {sample.index for sample in passing}
            yield from (sample for sample, seen in zip(chunk, done) if seen or sample.index in kept)

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.encoder.name, "min_clip_score": self.min_score, "rejected": self.rejected}


def load_caption_filter(model: str, pretrained: str, min_score: float | None, device: torch.device, *,
                        encoder: ClipEncoder | None = None) -> CaptionFilter | None:
    """The filter of ``--min_clip_score`` (``None`` when the flag is not given); ``encoder``: the
    same model already loaded (CLIP retrieval's), so it is not loaded twice."""
    if min_score is None:
        return None
    return CaptionFilter(encoder or ClipEncoder.load(model, pretrained, device=device), min_score)
