"""What the scores look like and which records were kept: statistics for reports, flags for the manifest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..manifest import ManifestRecord
from .base import SelectionResult

QUANTILES: tuple[int, ...] = (5, 25, 50, 75, 95)


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
