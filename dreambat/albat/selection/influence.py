"""``albat``: keep the candidates whose ALBAT influence score passes η."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import SettingError
from ..manifest import ManifestRecord
from .base import (
    INFLUENCE,
    KEEP_SETTINGS,
    RuleNeeds,
    SelectionResult,
    SelectionRule,
    check_keep,
    count_from_fraction,
    count_positive,
    register_rule,
    scored_best_first,
)


@register_rule
class AlbatSelection(SelectionRule):
    """Keep the candidates whose ALBAT score passes η: S(x) = 1[Z(x) >= η].

    Args:
        threshold: η itself.
        num_samples: keep the N best candidates (η = the N-th largest score). Ties at the
            N-th score are broken by (score desc, index asc), so exactly N are kept.
        fraction: keep round(fraction · pool) of the scored pool (at least 1), as top-N.
        force: also keep candidates with Z <= 0; by default they are never kept, and a
            ``message`` says so when that leaves fewer than requested.
        max_norm_ratio: never keep a candidate whose gradient norm (``ManifestRecord.grad_norm``)
            is above this multiple of the median over the scored records. Web pairs whose caption
            does not fit their image, and off-domain images, have several times the gradient norm of
            clean pairs (BENCHMARKS.md, "Web junk"); ``None`` keeps every norm, and records
            without a norm are never left out.

    Exactly one of ``threshold``, ``num_samples``, ``fraction`` must be given; through the
    registry, none given means ``threshold=0``: every candidate predicted to help.
    """

    name = "albat"
    needs = RuleNeeds(scores=INFLUENCE, keep=KEEP_SETTINGS, default_keep={"threshold": 0.0},
                      options=("force", "max_norm_ratio"))
    summary = "ALBAT influence scores"
    help = "influence scores of a surrogate LoRA, Z ≥ η"

    def __init__(
        self, *, threshold: float | None = None, num_samples: int | None = None,
        fraction: float | None = None, force: bool = False, max_norm_ratio: float | None = None,
    ) -> None:
        owner = f"selection rule {self.name!r}"
        given = {n: v for n, v in (("threshold", threshold), ("num_samples", num_samples), ("fraction", fraction))
                 if v is not None}
        if not given:
            raise SettingError(owner, "", None, "missing", ", ".join(KEEP_SETTINGS) + " (exactly one)")
        if len(given) > 1:
            raise SettingError(owner, ", ".join(given), tuple(given.values()), "conflict",
                               ", ".join(KEEP_SETTINGS) + " (exactly one)")
        if threshold is not None and not math.isfinite(threshold):
            raise SettingError(owner, "threshold", threshold, "invalid", "a finite number")
        check_keep(owner, num_samples, fraction)
        if max_norm_ratio is not None and not (isinstance(max_norm_ratio, (int, float)) and max_norm_ratio > 0
                                               and math.isfinite(max_norm_ratio)):
            raise SettingError(owner, "max_norm_ratio", max_norm_ratio, "invalid", "a finite number > 0")
        self.max_norm_ratio = max_norm_ratio
        self.threshold = threshold
        self.num_samples = num_samples
        self.fraction = fraction
        self.force = force

    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        ranked = scored_best_first(records)
        n_positive = count_positive(records)
        pool = len(ranked)
        ranked, capped = self._within_norm_cap(ranked)
        result = self._select(ranked, n_positive, pool)
        if capped:
            note = (f"{capped} candidate(s) with a gradient norm above {self.max_norm_ratio:g}x the pool's median "
                    "were not eligible (junk-like: large loss, large gradient).")
            result = replace(result, message=f"{result.message} {note}" if result.message else note)
        return result

    def _within_norm_cap(self, ranked: list[ManifestRecord]) -> tuple[list[ManifestRecord], int]:
        norms = [r.grad_norm for r in ranked if r.grad_norm is not None and math.isfinite(r.grad_norm)]
        if self.max_norm_ratio is None or not norms:
            return ranked, 0
        cap = self.max_norm_ratio * float(np.median(norms))
        kept = [r for r in ranked if r.grad_norm is None or not math.isfinite(r.grad_norm) or r.grad_norm <= cap]
        return kept, len(ranked) - len(kept)

    def _select(self, ranked: list[ManifestRecord], n_positive: int, pool: int) -> SelectionResult:
        if self.threshold is not None:
            return self._by_threshold(ranked, n_positive)
        requested = self.num_samples if self.num_samples is not None else count_from_fraction(self.fraction, pool)
        eligible = ranked if self.force else [r for r in ranked if r.score > 0]
        kept = eligible[:requested]
        message = None
        if len(kept) < requested:
            if not self.force and len(ranked) > len(eligible):
                message = (
                    f"Asked for {requested} backbone candidates but only {n_positive} of {len(ranked)} scored "
                    f"have Z > 0 (predicted to help); keeping those {n_positive}. Pass force=True "
                    "to fill up with candidates whose Z <= 0."
                )
            else:
                message = f"Asked for {requested} backbone candidates but only {len(ranked)} were scored; keeping all."
        return self._result(kept, requested, n_positive, message)

    def _by_threshold(self, ranked: list[ManifestRecord], n_positive: int) -> SelectionResult:
        passing = [r for r in ranked if r.score >= self.threshold]
        kept = passing if self.force else [r for r in passing if r.score > 0]
        message = None
        if len(kept) < len(passing):
            message = (
                f"{len(passing) - len(kept)} candidates pass the threshold η = {self.threshold:g} but have "
                f"Z <= 0 (predicted not to help) and were left out; pass force=True to keep them."
            )
        return self._result(kept, None, n_positive, message)

    @staticmethod
    def _result(kept: list[ManifestRecord], requested: int | None, n_positive: int, message: str | None) -> SelectionResult:
        return SelectionResult(
            selected_indices=sorted(r.index for r in kept),
            threshold=kept[-1].score if kept else None,
            requested=requested, kept=len(kept), n_positive=n_positive, message=message,
        )
