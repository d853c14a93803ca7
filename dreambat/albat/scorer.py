"""ALBAT scoring: fit the preconditioned direction on the subject data, then stream candidates.

The scorer is model-agnostic: it holds a :class:`ScoringTask` (per-sample losses), the
:class:`LoraBlocks` it differentiates, and an :class:`InverseStrategy`. After :meth:`fit`, scoring
a batch costs one forward and one backward (the fast path) and keeps nothing per candidate, so
memory stays flat however many candidates stream through :func:`score_candidates`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from .blocks import LoraBlocks
from .curvature import InverseStrategy, describe, precondition
from .gradients import contracted_scores, reference_rows, reference_scores
from .manifest import ManifestRecord, ManifestWriter
from .task import ScoringTask

ScoringPath = Literal["fast", "reference"]


class AlbatScorer:
    """Z(x) = Σ_l ⟨h_l, ∇_{θ_l} ℓ(x; θ)⟩ with h_l = G_l⁻¹ v_l fitted on the reference set."""

    def __init__(self, task: ScoringTask, blocks: LoraBlocks, strategy: InverseStrategy):
        self.task = task
        self.blocks = blocks
        self.strategy = strategy
        self.directions: dict[str, torch.Tensor] | None = None

    def fit(self, reference_batches: Iterable[Any]) -> dict[str, Any]:
        """Compute reference gradient rows (subject data x K terms) and the directions h_l.

        Returns:
            A description of the curvature (n_ref, λ and ‖h‖ per block) for reports.
        """
        rows = reference_rows(self.task, self.blocks, reference_batches)
        self.directions = precondition(rows, self.strategy)
        report = describe(rows, self.strategy, self.directions)
        report["n_ref"] = int(next(iter(rows.values())).shape[0])
        report["num_params"] = self.blocks.num_params
        return report

    def score_batch(self, batch: Any, *, path: ScoringPath = "fast") -> torch.Tensor:
        """Scores ``[B]`` (float64, NaN where the loss was not finite) of one candidate batch."""
        if self.directions is None:
            raise RuntimeError("AlbatScorer.fit(...) must run before scoring.")
        score = contracted_scores if path == "fast" else reference_scores
        return score(self.task, self.blocks, self.directions, batch)


@dataclass
class ScoreSummary:
    """Counts and throughput of one scoring pass (this process's share)."""

    scored: int = 0
    skipped_nonfinite: int = 0
    resumed: int = 0
    positive: int = 0
    seconds: float = 0.0
    scores: list[float] = field(default_factory=list, repr=False)

    @property
    def candidates_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def _batches(candidates: Iterable[Any], size: int, skip: Callable[[Any], bool], on_skip: Callable[[], None]) -> Iterator[list]:
    batch = []
    for candidate in candidates:
        if skip(candidate):
            on_skip()
            continue
        batch.append(candidate)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_candidates(
    scorer: AlbatScorer,
    candidates: Iterable[Any],
    collate: Callable[[Sequence[Any]], Any],
    writer: ManifestWriter,
    *,
    batch_size: int = 8,
    path: ScoringPath = "fast",
    show_progress: bool = True,
    total: int | None = None,
) -> ScoreSummary:
    """Score a stream of backbone candidates and append one manifest line per candidate.

    Args:
        scorer: a fitted :class:`AlbatScorer`.
        candidates: objects with ``index``, ``key``, ``url`` and ``caption`` (e.g.
            :class:`dreambat.data.shards.BackboneSample`), read lazily.
        collate: turns a list of candidates into a batch for ``scorer.task``.
        writer: the open manifest; candidates whose index it already holds are skipped (resume).
        batch_size: candidates per forward/backward.
        path: ``"fast"`` (hooks) or ``"reference"`` (per-sample loop).
        show_progress: draw a progress bar (candidates/s, non-finite skips, Z > 0 so far).
        total: expected number of candidates, for the bar.

    Returns:
        A :class:`ScoreSummary`; non-finite losses are recorded with status ``skipped``.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    summary = ScoreSummary()
    done = writer.done_indices
    progress = tqdm(total=total, desc="score", unit="cand", disable=not show_progress)

    def count_resumed() -> None:
        summary.resumed += 1
        progress.update(1)

    started = time.perf_counter()
    for batch in _batches(candidates, batch_size, lambda c: c.index in done, count_resumed):
        scores = scorer.score_batch(collate(batch), path=path)
        records = []
        for candidate, score in zip(batch, scores.tolist()):
            finite = math.isfinite(score)
            records.append(
                ManifestRecord(
                    index=candidate.index, key=candidate.key, url=candidate.url, caption=candidate.caption,
                    score=score if finite else None, status="scored" if finite else "skipped",
                    reason=None if finite else "nonfinite_loss",
                )
            )
            if finite:
                summary.scored += 1
                summary.positive += score > 0
                summary.scores.append(score)
            else:
                summary.skipped_nonfinite += 1
        writer.write(records)
        summary.seconds = time.perf_counter() - started
        progress.update(len(batch))
        progress.set_postfix(
            cand_per_s=f"{summary.candidates_per_second:.1f}",
            skipped=summary.skipped_nonfinite,
            positive=summary.positive,
        )
    progress.close()
    summary.seconds = time.perf_counter() - started
    return summary
