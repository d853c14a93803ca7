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

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..albat import ManifestRecord, ManifestWriter
from ..data.records import sample_source
from ..data.shards import BackboneSample

logger = logging.getLogger(__name__)

NOT_SHORTLISTED = "not_shortlisted"
"""The manifest's reason for a candidate the first stage did not keep."""
SHORTLIST_DIR = "shortlist"
"""The first stage's folder, inside the run's output folder."""
SCORE_FIELD = "shortlist_score"
"""The first-stage score's name in a record's ``source``."""
NO_EMBEDDING = "no_embedding"
"""The manifest's reason for a pool sample that ``--shortlist_embeddings`` holds no embedding of."""


@dataclass
class Shortlist:
    """What the first stage kept, and the filter that applies it to the second stage's stream.

    Attributes:
        size: the N of ``--shortlist``.
        kept: indices of the candidates it kept (at most N).
        records: the first stage's record of every candidate, by index: its score, or why it was
            skipped (a caption below ``--min_clip_score``), and its ``source`` (shard, caption, cosine).
        report: the first stage's report in brief.
        left_out: candidates this process's stream left out, by reason.
    """

    size: int
    kept: frozenset
    records: Mapping[int, ManifestRecord] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    left_out: Counter = field(default_factory=Counter)

    @classmethod
    def from_records(cls, size: int, records: Iterable[ManifestRecord], report: dict) -> Shortlist:
        """The shortlist of a finished first stage: its ``selected`` records are the kept ones."""
        by_index = {r.index: r for r in records}
        return cls(size, frozenset(i for i, r in by_index.items() if r.selected), by_index, report)

    def is_kept(self, sample: BackboneSample) -> bool:
        return sample.index in self.kept

    def first_score(self, sample: BackboneSample) -> float | None:
        first = self.records.get(sample.index)
        return None if first is None else first.score

    def source(self, sample: BackboneSample) -> dict[str, Any]:
        """A second-stage record's ``source``: the first stage's (shard, caption, cosine) plus its score."""
        first = self.records.get(sample.index)
        base = dict(first.source) if first is not None else sample_source(sample)
        return {**base, SCORE_FIELD: self.first_score(sample)}

    def reason(self, sample: BackboneSample) -> str:
        """Why a candidate that is not kept is left out: as the first stage skipped it, or :data:`NOT_SHORTLISTED`."""
        first = self.records.get(sample.index)
        return first.reason if first is not None and first.status == "skipped" else NOT_SHORTLISTED

    def left_out_record(self, sample: BackboneSample) -> ManifestRecord:
        """The record of a candidate the second stage does not score (counted in :attr:`left_out`)."""
        reason = self.reason(sample)
        self.left_out[reason] += 1
        return ManifestRecord(sample.index, sample.key, None, status="skipped", reason=reason,
                              source=self.source(sample))

    def stream(self, samples: Iterable[BackboneSample], writer: ManifestWriter, *,
               chunk: int = 256) -> Iterator[BackboneSample]:
        """The shortlisted samples of a stream, in order; the others go to ``writer`` as skipped
        records (:meth:`left_out_record`), ``chunk`` at a time. Samples the writer already holds (a
        resumed run) pass through, as the scorer counts them."""
        pending: list[ManifestRecord] = []
        for sample in samples:
            if self.is_kept(sample) or sample.index in writer.done_indices:
                yield sample
                continue
            pending.append(self.left_out_record(sample))
            if len(pending) >= chunk:
                writer.write(pending)
                pending = []
        if pending:
            writer.write(pending)

    def not_in_pool(self, records: Iterable[ManifestRecord]) -> int:
        """Kept candidates the second stage never met (none: the first stage read the same pool)."""
        return 0

    def report_section(self, records: list[ManifestRecord]) -> dict:
        """The score report's ``shortlist`` section (:meth:`describe` and ``not_in_pool``), with a
        warning when kept candidates were never met in the pool."""
        section = self.describe() | {"not_in_pool": self.not_in_pool(records)}
        if section["not_in_pool"]:
            logger.warning(
                "%d of the %d shortlisted embeddings have no candidate in --backbone_shards (after its filters), so "
                "only %d were scored: pass --shortlist_embeddings of these shards only, or a larger --shortlist.",
                section["not_in_pool"], section["kept"], section["kept"] - section["not_in_pool"])
        return section

    def describe(self) -> dict:
        """The report's ``shortlist`` section."""
        ranked = sum(r.score is not None for r in self.records.values())
        return {"size": self.size, "kept": len(self.kept), "ranked": ranked, **self.report}


@dataclass
class EmbeddingShortlist(Shortlist):
    """A first stage over precomputed embeddings (:mod:`dreambat.data.embeddings`), matched to the
    pool's samples by key.

    ``kept`` holds keys, ``scores`` their cosines; ``known`` every key the embeddings hold, so a pool
    sample without an embedding is told apart (skipped as :data:`NO_EMBEDDING`, counted) from one
    that was ranked and not kept. The cosines of those not kept are not held (memory stays that of the
    top N), so their records carry no first-stage score.
    """

    scores: Mapping[str, float] = field(default_factory=dict)
    known: frozenset = frozenset()
    rows: int = 0
    duplicates: int = 0

    def is_kept(self, sample: BackboneSample) -> bool:
        return sample.key in self.kept

    def first_score(self, sample: BackboneSample) -> float | None:
        return self.scores.get(sample.key)

    def source(self, sample: BackboneSample) -> dict[str, Any]:
        return {**sample_source(sample), SCORE_FIELD: self.first_score(sample)}

    def reason(self, sample: BackboneSample) -> str:
        return NOT_SHORTLISTED if sample.key in self.known else NO_EMBEDDING

    def not_in_pool(self, records: Iterable[ManifestRecord]) -> int:
        return len(self.kept - {r.key for r in records})

    def describe(self) -> dict:
        return {"size": self.size, "kept": len(self.kept), "ranked": self.rows, "duplicate_keys": self.duplicates,
                **self.report}
