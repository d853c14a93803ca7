"""A grouped bar chart of DINO / CLIP-I / CLIP-T per method (matplotlib, Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .constants import METRIC_LABELS, METRIC_NAMES, REAL_IMAGES
from .tables import PUBLISHED_REFERENCES, Reference, SubjectScore, summarize


def plot_scores(scores: Sequence[SubjectScore], path: Path, metrics: Sequence[str] = METRIC_NAMES, *,
                references: Sequence[Reference] = PUBLISHED_REFERENCES, title: str = "DreamBench") -> Path:
    """Bars of the mean over subjects (error bars: std) per metric and method; references hatched.

    Returns:
        ``path``, a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(scores, metrics)
    nan = float("nan")
    series = [(name.replace(REAL_IMAGES, "real images"), [cells[m].mean for m in metrics],
               [cells[m].std for m in metrics], None) for name, cells in summary.items()]
    series += [(ref.name, [getattr(ref, m) for m in metrics], [None] * len(metrics), "//") for ref in references]
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(min(16.0, max(6.0, 2.0 + 0.4 * len(series) * len(metrics))), 4.0), dpi=100)
    for index, (label, means, stds, hatch) in enumerate(series):
        xs = [m + (index - (len(series) - 1) / 2) * width for m in range(len(metrics))]
        heights = [nan if value is None else value for value in means]  # a missing value draws no bar
        errors = [0.0 if std is None else std for std in stds]
        axis.bar(xs, heights, width, yerr=errors, capsize=3, label=label, hatch=hatch, alpha=0.55 if hatch else 1.0)
        for x, value in zip(xs, means):
            if value is not None:
                axis.annotate(f"{value:.3f}", (x, value), ha="center", va="bottom" if value >= 0 else "top",
                              fontsize=7, xytext=(0, 2 if value >= 0 else -2), textcoords="offset points")
    axis.set_xticks(range(len(metrics)), [METRIC_LABELS[m] for m in metrics])
    axis.set_ylabel("cosine similarity (raw)")
    axis.set_title(title)
    axis.axhline(0.0, color="black", linewidth=0.5)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
