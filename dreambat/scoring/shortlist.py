"""``--shortlist N``: a cheap first stage in front of a costly score, for pools of LAION size.

ALBAT costs a forward and a backward pass per candidate and draw; CLIP similarity costs one image
embedding. The first stage ranks *every* candidate by CLIP similarity (to the subject photos, or to
a prompt), as ``--selection clip`` does and through the same streaming, resumable, multi-process
scoring run, in ``OUTPUT_DIR/shortlist/``; it keeps the top N. The second stage computes the rule's
own scores for those N only. Its manifest still lists every candidate: the shortlisted ones with
both scores, the others ``skipped`` with reason :data:`NOT_SHORTLISTED` and their first-stage
score, so a reader sees which stage dropped each one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..albat import ManifestRecord, ManifestWriter
from ..data.records import sample_source
from ..data.shards import BackboneSample

NOT_SHORTLISTED = "not_shortlisted"
"""The manifest's reason for a candidate the first stage did not keep."""
SHORTLIST_DIR = "shortlist"
"""The first stage's folder, inside the run's output folder."""
SCORE_FIELD = "shortlist_score"
"""The first-stage score's name in a record's ``source``."""


@dataclass
class Shortlist:
    """What the first stage kept, and the filter that applies it to the second stage's stream.

    Attributes:
        size: the N of ``--shortlist``.
        kept: indices of the candidates it kept (at most N).
        records: the first stage's record of every candidate, by index: its score, or why it was
            skipped (a caption below ``--min_clip_score``), and its ``source`` (shard, caption, cosine).
        report: the first stage's report in brief.
        dropped: candidates this process's stream left out as :data:`NOT_SHORTLISTED`.
        rejected: those it left out because the first stage had skipped them (e.g. ``caption_mismatch``).
    """

    size: int
    kept: frozenset[int]
    records: Mapping[int, ManifestRecord]
    report: dict = field(default_factory=dict)
    dropped: int = 0
    rejected: int = 0

    @classmethod
    def from_records(cls, size: int, records: Iterable[ManifestRecord], report: dict) -> Shortlist:
        """The shortlist of a finished first stage: its ``selected`` records are the kept ones."""
        by_index = {r.index: r for r in records}
        return cls(size, frozenset(i for i, r in by_index.items() if r.selected), by_index, report)

    def source(self, sample: BackboneSample) -> dict[str, Any]:
        """A second-stage record's ``source``: the first stage's (shard, caption, cosine) plus its score."""
        first = self.records.get(sample.index)
        base = dict(first.source) if first is not None else sample_source(sample)
        return {**base, SCORE_FIELD: first.score if first is not None else None}

    def left_out(self, sample: BackboneSample) -> ManifestRecord:
        """The record of a candidate the second stage does not score: skipped as the first stage
        skipped it, or :data:`NOT_SHORTLISTED`."""
        first = self.records.get(sample.index)
        if first is not None and first.status == "skipped":
            self.rejected += 1
            return ManifestRecord(sample.index, sample.key, None, status="skipped", reason=first.reason,
                                  source=self.source(sample))
        self.dropped += 1
        return ManifestRecord(sample.index, sample.key, None, status="skipped", reason=NOT_SHORTLISTED,
                              source=self.source(sample))

    def stream(self, samples: Iterable[BackboneSample], writer: ManifestWriter, *,
               chunk: int = 256) -> Iterator[BackboneSample]:
        """The shortlisted samples of a stream, in order; the others go to ``writer`` as skipped
        records (:meth:`left_out`), ``chunk`` at a time. Samples the writer already holds (a
        resumed run) pass through, as the scorer counts them."""
        pending: list[ManifestRecord] = []
        for sample in samples:
            if sample.index in self.kept or sample.index in writer.done_indices:
                yield sample
                continue
            pending.append(self.left_out(sample))
            if len(pending) >= chunk:
                writer.write(pending)
                pending = []
        if pending:
            writer.write(pending)

    def describe(self) -> dict:
        """The report's ``shortlist`` section."""
        ranked = sum(r.score is not None for r in self.records.values())
        return {"size": self.size, "kept": len(self.kept), "ranked": ranked, **self.report}
