"""``albat``: keep the candidates whose ALBAT influence score passes η."""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    Exactly one of ``threshold``, ``num_samples``, ``fraction`` must be given; through the
    registry, none given means ``threshold=0``: every candidate predicted to help.
    """

    name = "albat"
    needs = RuleNeeds(scores=INFLUENCE, keep=KEEP_SETTINGS, default_keep={"threshold": 0.0}, options=("force",))
    summary = "ALBAT influence scores"
    help = "influence scores of a surrogate LoRA, Z ≥ η"

    def __init__(
        self, *, threshold: float | None = None, num_samples: int | None = None,
        fraction: float | None = None, force: bool = False,
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
        self.threshold = threshold
        self.num_samples = num_samples
        self.fraction = fraction
        self.force = force

    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        ranked = scored_best_first(records)
        n_positive = count_positive(records)
        if self.threshold is not None:
            return self._by_threshold(ranked, n_positive)
        requested = self.num_samples if self.num_samples is not None else count_from_fraction(self.fraction, len(ranked))
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
