"""``random``: candidates drawn uniformly at random (the random-data baseline)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import SettingError
from ..manifest import ManifestRecord
from .base import RuleNeeds, SelectionResult, SelectionRule, check_keep, count_from_fraction, count_positive, register_rule


@register_rule
class RandomSelection(SelectionRule):
    """Keep candidates uniformly at random, without replacement (the random-data baseline).

    The pool is every record not marked ``skipped`` whose score is missing or finite: a random
    run need not score at all. The draw depends only on the pool (sorted by index), the count
    and ``seed``.

    Args:
        num_samples: how many to keep (0 keeps nothing: what :meth:`matching` gives for an
            empty ALBAT result).
        fraction: keep round(fraction · pool), at least 1.
        seed: seed of the ``numpy.random.Generator``.

    With neither count, it keeps as many as ALBAT's default rule would: the number of
    candidates with Z > 0.
    """

    name = "random"
    needs = RuleNeeds(keep=("num_samples", "fraction"), default_keep_reads_scores=True, options=("seed",))
    summary = "uniform random choice"
    help = "the same count, seeded; no scores needed"

    def __init__(self, *, num_samples: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        owner = f"selection rule {self.name!r}"
        if num_samples is not None and fraction is not None:
            raise SettingError(owner, "num_samples, fraction", (num_samples, fraction), "conflict",
                               "num_samples, fraction")
        check_keep(owner, num_samples, fraction, minimum=0)
        self.num_samples = num_samples
        self.fraction = fraction
        self.seed = seed

    @classmethod
    def matching(cls, albat_result: SelectionResult, *, seed: int = 0) -> RandomSelection:
        """A random rule keeping as many candidates as ``albat_result`` did."""
        return cls(num_samples=albat_result.kept, seed=seed)

    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        pool = sorted(
            (r for r in records if r.status != "skipped" and (r.score is None or math.isfinite(r.score))),
            key=lambda r: r.index,
        )
        n_positive = count_positive(records)
        if self.num_samples is not None:
            requested = self.num_samples
        elif self.fraction is not None:
            requested = count_from_fraction(self.fraction, len(pool))
        else:
            requested = n_positive
        count = min(requested, len(pool))
        message = None
        if count < requested:
            message = f"Asked for {requested} random backbone candidates but only {len(pool)} are usable; keeping all."
        chosen = np.random.default_rng(self.seed).choice(len(pool), size=count, replace=False) if count else []
        return SelectionResult(
            selected_indices=sorted(pool[int(i)].index for i in chosen), threshold=None,
            requested=requested, kept=count, n_positive=n_positive, message=message,
        )
