"""Tables: summary statistics against the statistics module, CSV/JSON/Markdown content, the plot."""

import csv
import json
import statistics

import pytest
from PIL import Image

from dreambat.eval.plots import plot_scores
from dreambat.eval.tables import CSV_COLUMNS, SubjectScore, markdown_table, summarize, write_tables


def _scores():
    rows = []
    for method, base in (("base", 0.5), ("bat", 0.6)):
        for k, subject in enumerate(("dog", "can", "vase")):
            rows.append(SubjectScore(method, subject, subject, "object", 8, 4,
                                     dino=base + 0.01 * k, clip_i=base + 0.2, clip_t=0.3 - 0.02 * k))
    rows.append(SubjectScore("real_images", "dog", "dog", "live", 0, 4, dino=0.8, clip_i=0.9))
    return rows


def test_summary_is_mean_and_sample_std_over_subjects():
    summary = summarize(_scores())
    assert list(summary) == ["base", "bat", "real_images"]
    dino = [0.6, 0.61, 0.62]
    assert summary["bat"]["dino"].mean == pytest.approx(statistics.fmean(dino))
    assert summary["bat"]["dino"].std == pytest.approx(statistics.stdev(dino))
    assert summary["real_images"]["clip_t"].mean is None and summary["real_images"]["dino"].std is None


def test_written_tables(tmp_path):
    paths = write_tables(tmp_path, _scores(), settings={"seed": 0})
    rows = list(csv.DictReader(paths["csv"].open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 7 and rows[-1]["clip_t"] == ""
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"metrics", "per_subject", "summary", "references", "settings"}
    assert data["references"][1]["clip_t"] == 0.305
    table = paths["md"].read_text()
    assert "| method | DINO | CLIP-I | CLIP-T | subjects | images / subject |" in table
    assert "| bat | 0.610 ± 0.010 | 0.800 ± 0.000 | 0.280 ± 0.020 | 3 | 8 |" in table
    assert "| *Real images (published)* | 0.774 | 0.885 | – |" in table
    assert "| *DreamBooth, Stable Diffusion (published)* | 0.668 | 0.803 | 0.305 |" in table


def test_metric_subset_and_plot(tmp_path):
    table = markdown_table(_scores(), ("clip_t",))
    assert "DINO" not in table.splitlines()[0] and "CLIP-T" in table
    path = plot_scores(_scores(), tmp_path / "scores.png")
    assert Image.open(path).size[0] >= 600
