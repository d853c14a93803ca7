"""How far a ranking of influence scores would survive a re-draw of its own Monte Carlo noise.

A score ``Z(x) = ⟨h, g(x)⟩`` is estimated from random draws on two sides: the reference
(adaptation) terms give the direction ``h``, the candidate's own terms give ``g(x)``. A run splits
each side's draws into two disjoint halves (``A``/``B`` for the reference, ``a``/``b`` for the
candidate) and scores every candidate with the four half-estimates ``Z_Aa, Z_Ab, Z_Ba, Z_Bb``.

``Z_Aa`` and ``Z_Bb`` share no draw: they are two independent half-budget runs, and their Spearman
correlation is the *half-run test-retest reliability*, measured, not modelled. The full run's
reliability (two runs with different ``--score_seed``) is predicted from the four by a variance-
components model on the candidates' ranks::

    rank Z_ij = T + a_i + b_j + e_ij        (T: the signal; a: reference noise of half i;
                                             b: candidate noise of half j; e: their interaction)

with ``cov(Aa, Bb) = σ_T²``, ``cov(Aa, Ab) = σ_T² + σ_a²`` (same reference half),
``cov(Aa, Ba) = σ_T² + σ_b²`` (same candidate half). A full run averages two halves on each side,
so its noise variance is ``σ_a²/2 + σ_b²/2 + σ_e²/4`` and its reliability
``σ_T² / (σ_T² + σ_a²/2 + σ_b²/2 + σ_e²/4)``. The Spearman–Brown value ``2r / (1 + r)`` of the
half-run correlation ``r`` assumes all noise halves with the budget, so it is a lower bound under
this model; both are reported. The model is checked against real two-seed runs in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SPLIT_NAMES = ("Aa", "Ab", "Ba", "Bb")
"""Order of the four half-estimates: reference half (A/B) × candidate half (a/b)."""


@dataclass(frozen=True)
class Reliability:
    """Split-half reliability of one run's ranking (see the module docstring).

    Attributes:
        candidates: how many candidates the estimate rests on.
        half_run: Spearman of ``Z_Aa`` and ``Z_Bb``, two independent half-budget runs (measured).
        spearman_brown: ``2r / (1 + r)`` of ``half_run``: the full run under the assumption that
            all noise halves with the budget (a lower bound).
        full_run: the full run's predicted test-retest Spearman from the variance components.
        reference_noise / candidate_noise / interaction_noise: each source's share of the full
            run's rank-noise variance (they sum to 1; 0 when there is no noise).
        limited_by: ``"reference"`` or ``"candidates"``: the side whose noise is larger.
    """

    candidates: int
    half_run: float
    spearman_brown: float
    full_run: float
    reference_noise: float
    candidate_noise: float
    interaction_noise: float
    limited_by: str

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), centred."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):  # average the ranks of tied values
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        if end > start:
            ranks[order[start:end + 1]] = (start + end) / 2
        start = end + 1
    return ranks - ranks.mean()


def spearman(x, y) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN if either is constant)."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    denominator = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denominator) if denominator > 0 else float("nan")


def split_half_reliability(split_scores: np.ndarray) -> Reliability | None:
    """Reliability from the four half-estimates of each candidate.

    Args:
        split_scores: ``[N, 4]`` in :data:`SPLIT_NAMES` order (``Z_Aa, Z_Ab, Z_Ba, Z_Bb``).

    Returns:
        ``None`` when fewer than 3 candidates have all four finite values.
    """
    scores = np.asarray(split_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores).all(axis=1)]
    n = len(scores)
    if n < 3:
        return None
    ranks = np.stack([_ranks(scores[:, j]) for j in range(4)], axis=1) / n  # scale-free
    aa, ab, ba, bb = (ranks[:, j] for j in range(4))

    def cov(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y / n)

    signal = (cov(aa, bb) + cov(ab, ba)) / 2
    reference = max(0.0, (cov(aa, ab) + cov(ba, bb)) / 2 - signal)
    candidate = max(0.0, (cov(aa, ba) + cov(ab, bb)) / 2 - signal)
    total = sum(cov(r, r) for r in (aa, ab, ba, bb)) / 4
    interaction = max(0.0, total - signal - reference - candidate)
    noise = reference / 2 + candidate / 2 + interaction / 4
    half_run = spearman(scores[:, 0], scores[:, 3])
    signal = max(signal, 0.0)
    full_run = signal / (signal + noise) if signal + noise > 0 else float("nan")
    shares = (reference / 2, candidate / 2, interaction / 4)
    shares = tuple(s / noise for s in shares) if noise > 0 else (0.0, 0.0, 0.0)
    return Reliability(
        candidates=n,
        half_run=half_run,
        spearman_brown=2 * half_run / (1 + half_run) if half_run > -1 else float("nan"),
        full_run=full_run,
        reference_noise=shares[0],
        candidate_noise=shares[1],
        interaction_noise=shares[2],
        limited_by="reference" if reference >= candidate else "candidates",
    )
