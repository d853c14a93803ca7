"""Score tables: per-subject rows, mean ± std over subjects, published reference rows.

Written side by side in ``output_dir``: ``scores.csv`` (one row per method and subject),
``scores.json`` (rows, summary, references and the settings) and ``scores.md`` (the summary as
a Markdown table). Standard deviations are sample standard deviations over subjects (``ddof=1``);
with a single subject there is none and the tables show ``–``. PRES and DIV (see
:mod:`dreambat.eval.metrics`) are always CSV columns, empty when the run did not measure them.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .constants import METRIC_LABELS, METRIC_NAMES, PRIOR_METRIC_NAMES, REAL_IMAGES

CSV_COLUMNS = ("method", "subject", "class_noun", "prompt_set", "num_generated", "num_real", *METRIC_NAMES,
               *PRIOR_METRIC_NAMES)


@dataclass(frozen=True)
class SubjectScore:
    """The metrics of one method on one subject (``None`` where not computed)."""

    method: str
    subject: str
    class_noun: str
    prompt_set: str
    num_generated: int
    num_real: int
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    pres: float | None = None
    """Prior preservation (lower is better): class-prompt images vs. the real photos, DINO cosine."""
    div: float | None = None
    """Diversity (higher is better): mean ``1 - cos`` between DINO embeddings of the subject-prompt images."""


@dataclass(frozen=True)
class Reference:
    """A published row, shown for comparison (never computed here)."""

    name: str
    dino: float | None
    clip_i: float | None
    clip_t: float | None
    source: str
    pres: float | None = None  # the paper's PRES / DIV are Imagen's, and its DIV is LPIPS: not shown
    div: float | None = None


# Published reference rows: DreamBooth paper (Ruiz et al. 2023), Table 1, DreamBench, 30 subjects.
PUBLISHED_REFERENCES: tuple[Reference, ...] = (
    Reference("Real images (published)", 0.774, 0.885, None, "DreamBooth paper, Table 1"),
    Reference("DreamBooth, Stable Diffusion (published)", 0.668, 0.803, 0.305, "DreamBooth paper, Table 1"),
)


@dataclass(frozen=True)
class MetricSummary:
    mean: float | None
    std: float | None
    n: int


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def summarize(scores: Sequence[SubjectScore], metrics: Sequence[str] = METRIC_NAMES,
              ) -> dict[str, dict[str, MetricSummary]]:
    """``{method: {metric: MetricSummary}}``: mean and sample std over subjects, methods in first-seen order."""
    summary: dict[str, dict[str, MetricSummary]] = {}
    for method in dict.fromkeys(score.method for score in scores):
        rows = [score for score in scores if score.method == method]
        summary[method] = {}
        for metric in metrics:
            values = _finite([getattr(row, metric) for row in rows])
            summary[method][metric] = MetricSummary(
                mean=statistics.fmean(values) if values else None,
                std=statistics.stdev(values) if len(values) > 1 else None,
                n=len(values),
            )
    return summary


def _cell(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


def markdown_table(scores: Sequence[SubjectScore], metrics: Sequence[str] = METRIC_NAMES,
                   references: Sequence[Reference] = PUBLISHED_REFERENCES, notes: Sequence[str] = ()) -> str:
    """The summary as Markdown: measured methods (mean ± std over subjects), then reference rows."""
    summary = summarize(scores, metrics)
    header = ["method", *(METRIC_LABELS[m] for m in metrics), "subjects", "images / subject"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, cells in summary.items():
        rows = [s for s in scores if s.method == method]
        images = sorted({s.num_real if method == REAL_IMAGES else s.num_generated for s in rows})
        name = "real images (measured, real vs. real)" if method == REAL_IMAGES else method
        lines.append("| " + " | ".join([
            name, *(_cell(cells[m].mean, cells[m].std) for m in metrics),
            str(len(rows)), "/".join(map(str, images)),
        ]) + " |")
    for ref in references:
        lines.append("| " + " | ".join([f"*{ref.name}*", *(_cell(getattr(ref, m)) for m in metrics), "30", "4 × 25"]) + " |")
    lines.append("")
    lines.append("Raw cosine similarities (not ×100), mean ± sample std over subjects. DINO / CLIP-I: "
                 "mean over all (generated, real) pairs; CLIP-T: mean over generated images of the "
                 "cosine with the prompt without the unique token.")
    if set(PRIOR_METRIC_NAMES) & set(metrics):
        lines.append("PRES (lower is better): DINO cosine of class-prompt images (no unique token) with the real "
                     "photos. DIV (higher is better): mean 1 − DINO cosine between images of the subject prompt "
                     "(DreamBooth uses LPIPS; not comparable with its numbers).")
    lines.extend(notes)
    return "\n".join(lines) + "\n"


def write_tables(output_dir: Path, scores: Sequence[SubjectScore], metrics: Sequence[str] = METRIC_NAMES, *,
                 settings: dict | None = None, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``scores.csv``, ``scores.json`` and ``scores.md``; returns their paths by suffix."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": output_dir / "scores.csv", "json": output_dir / "scores.json", "md": output_dir / "scores.md"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for score in scores:
            row = asdict(score)
            writer.writerow({key: "" if row[key] is None else row[key] for key in CSV_COLUMNS})
    summary = {method: {metric: asdict(value) for metric, value in cells.items()}
               for method, cells in summarize(scores, metrics).items()}
    paths["json"].write_text(json.dumps({
        "metrics": list(metrics),
        "per_subject": [asdict(score) for score in scores],
        "summary": summary,
        "references": [asdict(ref) for ref in PUBLISHED_REFERENCES],
        "settings": settings or {},
    }, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown_table(scores, metrics, notes=notes))
    return paths
