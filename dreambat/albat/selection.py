"""Selection rules: which scored backbone candidates join the training mixture.

Each rule is a small object with one method, ``select(records) -> SelectionResult``, chosen by
name through :func:`get_rule`:

- ``albat``: deterministic thresholding S(x) = 1[Z(x) >= η], with η given directly, or as the
  N-th largest score (top-N), or from a fraction of the scored pool. Candidates with Z <= 0 are
  predicted not to help and are never kept unless ``force=True``.
- ``clip``: the N candidates nearest to the subject photos by CLIP image embedding (a baseline a
  user would otherwise reach for).
- ``random``: the same number of candidates uniformly at random (seeded); the baseline.
- ``none``: nothing (plain DreamBooth-LoRA).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .manifest import ManifestRecord

QUANTILES: tuple[int, ...] = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class SelectionResult:
    """What a rule kept.

    Attributes:
        selected_indices: manifest ``index`` values of the kept candidates, sorted.
        threshold: the effective η (lowest kept score) for ``albat``; ``None`` otherwise or if
            nothing was kept.
        requested: the number of candidates asked for (top-N or fraction), ``None`` for a threshold.
        kept: ``len(selected_indices)``.
        n_positive: scored candidates with Z > 0 (predicted to help).
        message: a warning for the user, e.g. fewer helpful candidates than requested.
    """

    selected_indices: list[int]
    threshold: float | None
    requested: int | None
    kept: int
    n_positive: int
    message: str | None = None


def _scored(records: Sequence[ManifestRecord]) -> list[ManifestRecord]:
    """Records with a finite score, ordered best first: (score desc, index asc)."""
    return sorted((r for r in records if r.has_score), key=lambda r: (-r.score, r.index))


def _n_positive(records: Sequence[ManifestRecord]) -> int:
    return sum(1 for r in records if r.has_score and r.score > 0)


def _count_from_fraction(fraction: float, pool: int) -> int:
    """round(fraction · pool), halves rounded up, and at least 1 for a non-empty pool."""
    return max(1, math.floor(fraction * pool + 0.5)) if pool else 0


def _check_count(num_samples: int | None, fraction: float | None, *, minimum: int = 1) -> None:
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < minimum):
        raise ConfigError(f"--num_backbone_samples must be an integer >= {minimum}, got {num_samples!r}.")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(f"--backbone_fraction must be in (0, 1], got {fraction!r}.")


class SelectionRule(ABC):
    """Decides which candidates of a manifest are kept."""

    name: ClassVar[str]

    @abstractmethod
    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        """Choose among ``records``; skipped or unscorable records are never chosen."""


class AlbatSelection(SelectionRule):
    """Keep the candidates whose ALBAT score passes η: S(x) = 1[Z(x) >= η].

    Args:
        threshold: η itself.
        num_samples: keep the N best candidates (η = the N-th largest score). Ties at the
            N-th score are broken by (score desc, index asc), so exactly N are kept.
        fraction: keep round(fraction · pool) of the scored pool (at least 1), as top-N.
        force: also keep candidates with Z <= 0; by default they are never kept, and a
            ``message`` says so when that leaves fewer than requested.

    Exactly one of ``threshold``, ``num_samples``, ``fraction`` must be given.
    """

    name = "albat"

    def __init__(
        self, *, threshold: float | None = None, num_samples: int | None = None,
        fraction: float | None = None, force: bool = False,
    ) -> None:
        given = [n for n, v in (("threshold", threshold), ("num_samples", num_samples), ("fraction", fraction))
                 if v is not None]
        if len(given) != 1:
            raise ConfigError(
                "ALBAT selection needs exactly one of a score threshold (--score_threshold), a count "
                f"(--num_backbone_samples) or a fraction (--backbone_fraction); got {given or 'none'}."
            )
        if threshold is not None and not math.isfinite(threshold):
            raise ConfigError(f"--score_threshold must be a finite number, got {threshold!r}.")
        _check_count(num_samples, fraction)
        self.threshold = threshold
        self.num_samples = num_samples
        self.fraction = fraction
        self.force = force

    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        ranked = _scored(records)
        n_positive = _n_positive(records)
        if self.threshold is not None:
            return self._by_threshold(ranked, n_positive)
        requested = self.num_samples if self.num_samples is not None else _count_from_fraction(self.fraction, len(ranked))
        eligible = ranked if self.force else [r for r in ranked if r.score > 0]
        kept = eligible[:requested]
        message = None
        if len(kept) < requested:
            if not self.force and len(ranked) > len(eligible):
                message = (
                    f"Asked for {requested} backbone candidates but only {n_positive} of {len(ranked)} scored "
                    f"have Z > 0 (predicted to help); keeping those {n_positive}. Pass --keep_nonpositive "
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
                f"Z <= 0 (predicted not to help) and were left out; pass --keep_nonpositive to keep them."
            )
        return self._result(kept, None, n_positive, message)

    @staticmethod
    def _result(kept: list[ManifestRecord], requested: int | None, n_positive: int, message: str | None) -> SelectionResult:
        return SelectionResult(
            selected_indices=sorted(r.index for r in kept),
            threshold=kept[-1].score if kept else None,
            requested=requested, kept=len(kept), n_positive=n_positive, message=message,
        )


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

    def __init__(self, *, num_samples: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        if num_samples is not None and fraction is not None:
            raise ConfigError("Give at most one of --num_backbone_samples and --backbone_fraction for --selection random.")
        _check_count(num_samples, fraction, minimum=0)
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
        n_positive = _n_positive(records)
        if self.num_samples is not None:
            requested = self.num_samples
        elif self.fraction is not None:
            requested = _count_from_fraction(self.fraction, len(pool))
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


class NearestSelection(AlbatSelection):
    """Keep the N candidates with the highest similarity score (CLIP retrieval, Custom Diffusion's
    way of picking real regularisation images). A similarity is not an influence: candidates are
    kept whatever its sign, and a count (or fraction) is required.
    """

    name = "clip"

    def __init__(self, *, num_samples: int | None = None, fraction: float | None = None) -> None:
        if num_samples is None and fraction is None:
            raise ConfigError("--selection clip keeps a count: pass --num_backbone_samples or --backbone_fraction.")
        super().__init__(num_samples=num_samples, fraction=fraction, force=True)


class NoSelection(SelectionRule):
    """Keep nothing: plain DreamBooth-LoRA on the subject photos alone."""

    name = "none"

    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        return SelectionResult([], threshold=None, requested=None, kept=0, n_positive=_n_positive(records))


RULES: dict[str, type[SelectionRule]] = {
    rule.name: rule for rule in (AlbatSelection, NearestSelection, RandomSelection, NoSelection)
}


def get_rule(name: str, **kwargs: Any) -> SelectionRule:
    """The selection rule called ``name`` (``albat``, ``random``, ``none``), built with ``kwargs``."""
    try:
        rule = RULES[name]
    except KeyError:
        raise ConfigError(f"Unknown --selection {name!r}; choose one of: {', '.join(RULES)}.") from None
    try:
        return rule(**kwargs)
    except TypeError as error:
        raise ConfigError(f"Bad settings for --selection {name}: {error}.") from error


def score_statistics(records: Sequence[ManifestRecord]) -> dict[str, Any]:
    """Counts and distribution of the scores, for the run report.

    Returns a JSON-ready dict: ``total``, ``scored`` (finite scores), ``skipped`` (the rest),
    ``n_positive`` (Z > 0), ``mean``, ``std`` (population, ddof=0), ``min``, ``max`` and
    ``quantiles`` {"p5", "p25", "p50", "p75", "p95"} (linear interpolation); the
    distribution entries are ``None`` when nothing was scored.
    """
    scores = np.array([r.score for r in records if r.has_score], dtype=np.float64)
    stats: dict[str, Any] = {
        "total": len(records), "scored": int(scores.size), "skipped": len(records) - int(scores.size),
        "n_positive": int((scores > 0).sum()),
    }
    if scores.size == 0:
        return stats | {"mean": None, "std": None, "min": None, "max": None,
                        "quantiles": {f"p{q}": None for q in QUANTILES}}
    values = np.quantile(scores, [q / 100 for q in QUANTILES])
    return stats | {
        "mean": float(scores.mean()), "std": float(scores.std()), "min": float(scores.min()),
        "max": float(scores.max()), "quantiles": {f"p{q}": float(v) for q, v in zip(QUANTILES, values)},
    }


def apply_selection(records: Sequence[ManifestRecord], result: SelectionResult) -> list[ManifestRecord]:
    """Copies of ``records`` with ``selected`` set: True for the kept indices, False for all others."""
    kept = set(result.selected_indices)
    return [replace(r, selected=r.index in kept) for r in records]
