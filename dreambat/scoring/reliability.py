"""The reliability line of a scoring run: the estimate from the manifest, and what to raise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..albat.manifest import ManifestRecord
from ..albat.reliability import split_half_reliability
from ..constants import RELIABILITY_WARNING
from .config import ScoringConfig


def reliability_report(records: Sequence[ManifestRecord], scoring: ScoringConfig) -> dict | None:
    """The split-half reliability of the manifest's ranking (``None`` without split scores)."""
    split = [r.split_scores for r in records if r.has_score and r.split_scores is not None]
    estimate = split_half_reliability(np.array(split)) if split else None
    if estimate is None:
        return None
    halves = scoring.candidate_design().halves()
    return estimate.to_dict() | {
        "candidate_rows": scoring.candidate_design().num_terms,
        "caveat": None if scoring.num_score_timesteps >= 8 else (
            f"each candidate half covers only {min(len(h) for h in halves)} of the K = {scoring.num_score_timesteps} "
            "timesteps' terms, so the halves estimate different things and full_run is a loose lower bound"),
        "reference_rows_per_photo": scoring.reference_design().num_terms,
        "method": "split-half: Spearman of two disjoint half-budget estimates (half_run); full_run from "
                  "the variance components of the four half-estimates; spearman_brown = 2r/(1+r), a lower bound",
    }


def describe_reliability(reliability: dict | None) -> str:
    if reliability is None:
        return "reliability not estimated (needs at least 2 timesteps on each side)"
    return (f"estimated test-retest Spearman {reliability['full_run']:.2f} (half-budget runs agree at "
            f"{reliability['half_run']:.2f})")


def reliability_advice(reliability: dict | None, scoring: ScoringConfig) -> str | None:
    """A warning naming the flag to raise when the estimate is below the threshold, else ``None``."""
    if reliability is None or not round(reliability["full_run"], 2) < RELIABILITY_WARNING:
        return None
    if reliability["limited_by"] == "reference":
        fix = (f"raise --reference_draws (now {scoring.reference_draws}; the reference side is fitted once, "
               "so 4x more draws cost little)")
    else:
        fix = f"raise --num_score_timesteps (now {scoring.num_score_timesteps}; each candidate costs K UNet rows)"
        if not scoring.antithetic:
            fix += " or add --antithetic"
    return (f"The ALBAT ranking is unreliable: a rerun with another --score_seed would agree only at an "
            f"estimated Spearman {reliability['full_run']:.2f} (below {RELIABILITY_WARNING:.2f}), so the kept "
            f"images are partly chance. Its noise comes mostly from the {reliability['limited_by']}: {fix}.")
