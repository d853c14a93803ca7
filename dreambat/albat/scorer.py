"""ALBAT scoring: fit the preconditioned direction on the subject data, then stream candidates.

The scorer is model-agnostic: it holds a :class:`ScoringTask` (per-sample losses), the
:class:`LoraBlocks` it differentiates, and an :class:`InverseStrategy`. After :meth:`fit`, scoring
a batch costs one forward and one backward (the fast path) and keeps nothing per candidate but
its score and four half-estimates (for the split-half reliability), so memory stays flat
however many candidates stream through :func:`score_candidates`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import DataError
from .blocks import LoraBlocks
from .curvature import InverseStrategy, describe, precondition
from .errors import SettingError
from .gradients import contract_batch, reference_rows, reference_term_norms, reference_term_scores
from .manifest import ManifestRecord, ManifestWriter
from .task import ScoringTask, as_matrix

ScoringPath = Literal["fast", "reference"]
SCORING_PATHS: tuple[str, ...] = ("fast", "reference")
# What a score ranks by. none: Z = ⟨h, ∇ℓ(x)⟩, the paper's formula, which grows with the candidate's
# gradient norm (a caption that does not fit its image has a large loss and a large gradient).
# candidate: the cosine of h and ∇ℓ(x) (LESS's unit-normalised gradient features). timestep: the
# mean over the K draws of the cosine of h and each draw's gradient, so that no draw dominates.
Normalization = Literal["none", "candidate", "timestep"]
NORMALIZATIONS: tuple[str, ...] = ("none", "candidate", "timestep")


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one candidate batch.

    Attributes:
        scores: ``[B]`` float64 ``Z`` (NaN where the loss was not finite).
        split: ``[B, 4]`` float64 half-estimates ``Z_Aa, Z_Ab, Z_Ba, Z_Bb`` (reference half ×
            candidate half, :mod:`.reliability`), or ``None`` when the tasks declare no halves.
        losses: ``[B]`` float64 mean loss of each candidate over its terms, or ``None``.
        grad_norms: ``[B]`` float64 ``‖∇ℓ(x)‖`` over the scored blocks, or ``None``.
    """

    scores: torch.Tensor
    split: torch.Tensor | None = None
    losses: torch.Tensor | None = None
    grad_norms: torch.Tensor | None = None


def _halves(task: Any) -> tuple[list[int], list[int]] | None:
    halves = getattr(task, "term_halves", None)
    if halves is None:
        return None
    first, second = halves()
    return (list(first), list(second)) if first and second else None


class AlbatScorer:
    """Z(x) = Σ_l ⟨h_l, ∇_{θ_l} ℓ(x; θ)⟩ with h_l = G_l⁻¹ v_l fitted on the reference set.

    Args:
        task: the candidates' per-sample losses.
        blocks: the LoRA factors differentiated.
        strategy: the inverse-curvature strategy.
        reference_task: the adaptation data's losses when they use other terms than the
            candidates' (e.g. many more noise draws); default ``task``.
        normalize_terms: weight every term so that each group of terms (``task.term_groups()``,
            e.g. one group per timestep) has the same RMS reference-gradient norm, instead of
            letting the noisiest group dominate. The weights are fitted on the reference rows and
            fixed before any candidate is scored, so the score stays one directional derivative.
        normalization: what the score ranks by (:data:`NORMALIZATIONS`): ``"none"``, Z itself;
            ``"candidate"``, the cosine of h and the candidate's gradient; ``"timestep"``, the mean
            cosine of h and each term's gradient. Every path computes the candidates' losses and
            gradient norms either way (:class:`ScoredBatch`).

    When both tasks declare ``term_halves()`` (two disjoint halves of their terms), :meth:`fit`
    also fits one direction on each reference half, and :meth:`score_batch_split` returns the
    four half-estimates that :func:`~.reliability.split_half_reliability` needs, from the same
    forward and backward pass.
    """

    def __init__(
        self, task: ScoringTask, blocks: LoraBlocks, strategy: InverseStrategy, *,
        reference_task: ScoringTask | None = None, normalize_terms: bool = False,
        normalization: Normalization = "none",
    ):
        if normalization not in NORMALIZATIONS:
            raise SettingError("score normalization", "normalization", normalization, "unknown", ", ".join(NORMALIZATIONS))
        self.normalization = normalization
        self.task = task
        self.reference_task = reference_task if reference_task is not None else task
        self.blocks = blocks
        self.strategy = strategy
        self.normalize_terms = normalize_terms
        self.directions: dict[str, torch.Tensor] | None = None
        self.term_weights: torch.Tensor | None = None
        self._candidate_halves = _halves(task)

    def fit(self, reference_batches: Iterable[Any]) -> dict[str, Any]:
        """Compute the reference gradient rows and the direction(s) h_l.

        Returns:
            A description of the curvature (n_ref, λ and ‖h‖ per block, term weights) for reports.
        """
        rows = reference_rows(self.reference_task, self.blocks, reference_batches)
        n_ref = int(next(iter(rows.values())).shape[0])
        num_terms = _num_terms(self.reference_task)
        term_of_row = torch.arange(n_ref) % num_terms
        report: dict[str, Any] = {}
        if self.normalize_terms:
            rows, report["term_weights"] = self._normalize(rows, term_of_row)
        halves = _halves(self.reference_task) if self._candidate_halves is not None else None
        masks = [torch.isin(term_of_row, torch.tensor(half)) for half in halves] if halves else []
        directions = {}
        for name, block_rows in rows.items():  # block by block: a half's rows are copied one block at a time
            h = precondition({name: block_rows}, self.strategy)[name]
            halves_h = [precondition({name: block_rows[mask]}, self.strategy)[name] for mask in masks]
            directions[name] = torch.stack([h, *halves_h]) if halves_h else h
        full = {name: d[0] if d.ndim == 2 else d for name, d in directions.items()}
        report = describe(rows, self.strategy, full) | report
        self.directions = directions
        stacked = [d.double().reshape(-1, d.shape[-1]) for d in directions.values()]  # [n_dir, d_l] per block
        self._direction_norms = torch.sqrt(sum(h.pow(2).sum(dim=1) for h in stacked))  # ‖h_j‖ over all blocks
        report["n_ref"] = n_ref
        report["normalization"] = self.normalization
        report["num_params"] = self.blocks.num_params
        report["reference_rows_mb"] = round(sum(r.numel() * r.element_size() for r in rows.values()) / 2**20, 1)
        report["split_half"] = bool(halves)
        return report

    def _normalize(self, rows: dict[str, torch.Tensor], term_of_row: torch.Tensor):
        groups_of = getattr(self.reference_task, "term_groups", None)
        candidate_groups = getattr(self.task, "term_groups", None)
        if groups_of is None or candidate_groups is None:
            raise DataError("normalize_terms needs tasks that declare term_groups() (e.g. one group per timestep).")
        ref_groups = torch.tensor(groups_of())[term_of_row]
        squared = sum(r.double().pow(2).sum(dim=1) for r in rows.values())
        overall = squared.mean()
        weights = {}
        for group in sorted(set(ref_groups.tolist())):
            mean = squared[ref_groups == group].mean()
            weights[group] = float((overall / mean).sqrt()) if mean > 0 else 1.0
        row_weights = torch.tensor([weights[g] for g in ref_groups.tolist()], dtype=torch.float32)
        try:
            self.term_weights = torch.tensor([weights[g] for g in candidate_groups()], dtype=torch.float32)
        except KeyError as error:
            raise DataError(f"Candidate term group {error} has no reference rows to normalise it by.") from None
        return {name: r * row_weights[:, None] for name, r in rows.items()}, weights

    def _check_fitted(self) -> None:
        if self.directions is None:
            raise RuntimeError("AlbatScorer.fit(...) must run before scoring.")

    def score_batch(self, batch: Any, *, path: ScoringPath = "fast") -> torch.Tensor:
        """Scores ``[B]`` (float64, NaN where the loss was not finite) of one candidate batch."""
        return self.score_batch_split(batch, path=path).scores

    def score_batch_split(self, batch: Any, *, path: ScoringPath = "fast") -> ScoredBatch:
        """Scores, the candidates' losses and gradient norms and, when available, the four
        half-estimates of one candidate batch."""
        self._check_fitted()
        split = next(iter(self.directions.values())).ndim == 2
        weights = self.term_weights
        if path == "fast":
            found = contract_batch(self.task, self.blocks, self.directions, batch, weights=weights, norms=True)
            terms, losses, term_norms, grad_norms = found.terms, found.losses, found.term_norms, found.sample_norms
        else:
            terms = reference_term_scores(self.task, self.blocks, self.directions, batch, weights=weights)
            term_norms, grad_norms = reference_term_norms(self.task, self.blocks, batch, weights=weights)
            with torch.no_grad():
                losses = as_matrix(self.task.loss_matrix(batch)).double().mean(dim=1).cpu()
            losses[~torch.isfinite(terms[:, :, 0]).all(dim=1)] = float("nan")
        terms = self._normalized(terms, term_norms, grad_norms)
        scores = terms[:, :, 0].sum(dim=1)
        if not split:
            return ScoredBatch(scores, None, losses, grad_norms)
        num_terms = terms.shape[1]
        halves = [(direction, half) for direction in (1, 2) for half in self._candidate_halves]
        split_scores = torch.stack(
            [terms[:, half, direction].sum(dim=1) * (num_terms / len(half)) for direction, half in halves], dim=1
        )
        return ScoredBatch(scores, split_scores, losses, grad_norms)

    def _normalized(self, terms: torch.Tensor, term_norms: torch.Tensor, grad_norms: torch.Tensor) -> torch.Tensor:
        """``terms`` ``[B, K, n_dir]`` turned into what :attr:`normalization` ranks by (summing over
        K still gives the score); a zero gradient or direction gives 0, never a division by zero."""
        if self.normalization == "none":
            return terms
        h_norms = self._direction_norms[: terms.shape[2]].to(terms)[None, None, :]
        if self.normalization == "candidate":
            scale = grad_norms[:, None, None] * h_norms
        else:
            scale = term_norms[:, :, None] * h_norms * terms.shape[1]
        cosines = torch.where(scale > 0, terms / scale.clamp_min(torch.finfo(terms.dtype).tiny), torch.zeros_like(terms))
        return torch.where(torch.isnan(terms), terms, cosines)  # a non-finite loss stays NaN


def _num_terms(task: Any) -> int:
    groups = getattr(task, "term_groups", None)
    return len(groups()) if groups is not None else 1


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


class _NoBar:
    """The part of a tqdm bar that :func:`score_candidates` uses, doing nothing."""

    def __init__(self, **_: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def score_candidates(
    scorer: AlbatScorer,
    candidates: Iterable[Any],
    collate: Callable[[Sequence[Any]], Any],
    writer: ManifestWriter,
    *,
    batch_size: int = 8,
    path: ScoringPath = "fast",
    progress: Callable[..., Any] | None = None,
    total: int | None = None,
    source: Callable[[Any], Mapping[str, Any]] | None = None,
) -> ScoreSummary:
    """Score a stream of backbone candidates and append one manifest line per candidate.

    Args:
        scorer: a fitted :class:`AlbatScorer`.
        candidates: objects with ``index`` and ``key`` (e.g.
            :class:`dreambat.data.shards.BackboneSample`), read lazily.
        collate: turns a list of candidates into a batch for ``scorer.task``.
        writer: the open manifest; candidates whose index it already holds are skipped (resume).
        batch_size: candidates per forward/backward; a short last batch is padded to this size, so
            that every candidate is scored in a batch of the same shape (bit-identical scores for
            any split of the stream across processes).
        path: ``"fast"`` (hooks) or ``"reference"`` (per-sample loop).
        progress: a tqdm-like bar factory, called as ``progress(total=, desc=, unit=)``; the bar
            shows candidates/s, non-finite skips and Z > 0 so far. ``None``: no bar.
        total: expected number of candidates, for the bar.
        source: what each record remembers of its candidate (``ManifestRecord.source``), e.g.
            its shard and caption; ``None``: nothing.

    Returns:
        A :class:`ScoreSummary`; non-finite losses are recorded with status ``skipped``.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    summary = ScoreSummary()
    done = writer.done_indices
    bar = (progress or _NoBar)(total=total, desc="score", unit="cand")

    def count_resumed() -> None:
        summary.resumed += 1
        bar.update(1)

    started = time.perf_counter()
    for batch in _batches(candidates, batch_size, lambda c: c.index in done, count_resumed):
        # The last batch is padded to the full size: every forward then has the same shape, and a
        # candidate's float32 score does not depend on how candidates were split across processes.
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        scored = scorer.score_batch_split(collate(padded), path=path)
        count = len(batch)
        splits = scored.split[:count].tolist() if scored.split is not None else [None] * count
        losses = scored.losses[:count].tolist() if scored.losses is not None else [None] * count
        norms = scored.grad_norms[:count].tolist() if scored.grad_norms is not None else [None] * count
        records = []
        for candidate, score, split, loss, norm in zip(batch, scored.scores[:count].tolist(), splits, losses, norms):
            finite = math.isfinite(score)
            records.append(
                ManifestRecord(
                    index=candidate.index, key=candidate.key, source=source(candidate) if source else {},
                    score=score if finite else None, status="scored" if finite else "skipped",
                    reason=None if finite else "nonfinite_loss",
                    split_scores=tuple(split) if finite and split is not None else None,
                    loss=loss if finite else None, grad_norm=norm if finite else None,
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
        bar.update(len(batch))
        bar.set_postfix(
            cand_per_s=f"{summary.candidates_per_second:.1f}",
            skipped=summary.skipped_nonfinite,
            positive=summary.positive,
        )
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary
