"""Test-retest reliability of ALBAT's ranking against its cost, on the mini-world.

For each subject: a surrogate LoRA (the demo's recipe, 100 steps), then, for each estimator
setting, two complete ``run_scoring`` runs that differ only in ``--score_seed``, over the first
``--candidates`` images of the bundled world shard (stream order). Per (subject, setting) one JSON line:

* ``test_retest``: Spearman between the two runs' scores (measured), and ``top_overlap``: the
  share of the top ``--top_fraction`` of one run that is in the other's;
* the run's own split-half estimate (``builtin_full_run``, ``builtin_half_run``,
  ``builtin_spearman_brown``, ``limited_by``), to check it against the measured value;
* the cost: UNet rows per candidate, reference rows, seconds per candidate and for the reference.

Settings are named in :data:`SETTINGS` (flags on top of the library defaults). Resumable: a
(subject, setting) already in the output file is skipped, and a scoring folder is reused.

    python -m benchmarks.bench_reliability --subjects 6 --settings old new
    python -m benchmarks.bench_reliability --subjects 2 --settings all
    python -m benchmarks.bench_reliability --table    # print the tables of the results file
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import REPO, git_head, log, machine_info
from dreambat.albat import read_manifest
from dreambat.albat import spearman
from dreambat.scoring.config import ScoreSettings
from dreambat.scoring.run import run_scoring
from dreambat.training.config import TrainConfig
from dreambat.training.dreambooth import run_dreambooth
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, BUNDLED_SHARD, SUBJECTS_DIR
from dreambat_world.subjects import WORLD_SUBJECTS

OLD = {"num_score_timesteps": 8, "reference_draws": 1, "antithetic": False, "common_noise": False}
"""The library's defaults before the variance-controlled estimator (K = 8, 40 reference rows)."""

SETTINGS: dict[str, dict] = {
    "old": OLD,
    "old_K2": OLD | {"num_score_timesteps": 2},  # the demo's earlier setting
    "new": {},  # the current defaults
    # each variance reduction alone, on top of the old defaults
    "old+antithetic": OLD | {"antithetic": True},
    "old+common_noise": OLD | {"common_noise": True},
    "old+stratified": OLD | {"score_timesteps": "stratified"},
    "old+normalize": OLD | {"normalize_timesteps": True},
    "old+square": OLD | {"score_output": "square"},
    "old+ref64": OLD | {"reference_draws": 64},
    # the reference budget at the new candidate side
    "new_ref1": {"reference_draws": 1},
    "new_ref4": {"reference_draws": 4},
    "new_ref16": {"reference_draws": 16},
    # the candidate budget at the new reference side
    "new_K2": {"num_score_timesteps": 2},
    "new_K4": {"num_score_timesteps": 4},
    "new_K16": {"num_score_timesteps": 16},
    # what the new defaults do not use
    "new+stratified": {"score_timesteps": "stratified"},
    "new+normalize": {"normalize_timesteps": True},
    "new-common_noise": {"common_noise": False},
    "new+square": {"score_output": "square"},
    "new_datainf": {"curvature": "datainf"},
    "new_identity": {"curvature": "identity"},
}

SURROGATE_STEPS = 100


def surrogate(subject, root: Path, steps: int = SURROGATE_STEPS) -> Path:
    """The demo's surrogate recipe for ``subject``, ``steps`` long (trained once, then reused)."""
    out = root / subject.name / "surrogate"
    if not (out / "pytorch_lora_weights.safetensors").is_file():
        run_dreambooth(TrainConfig(
            pretrained_model_name_or_path=str(ASSETS_DIR / BACKBONE_DIR),
            instance_data_dir=str(ASSETS_DIR / SUBJECTS_DIR / subject.name / "train"),
            instance_prompt=f"a photo of sks {subject.class_word}", output_dir=str(out), seed=0,
            resolution=32, random_flip=True, train_batch_size=4,
            learning_rate=1e-3, rank=8, max_train_steps=steps, checkpointing_steps=10**9, report_to="none",
        ), description="surrogate")
    return out


def score(subject, setting: str, seed: int, root: Path, candidates: int) -> dict:
    out = root / subject.name / setting / f"seed{seed}"
    flags = dict(
        pretrained_model_name_or_path=str(ASSETS_DIR / BACKBONE_DIR),
        instance_data_dir=str(ASSETS_DIR / SUBJECTS_DIR / subject.name / "train"),
        instance_prompt=f"a photo of sks {subject.class_word}", output_dir=str(out), resolution=32,
        surrogate_lora=str(surrogate(subject, root)), backbone_shards=[str(ASSETS_DIR / BUNDLED_SHARD)],
        max_candidates=candidates, score_batch_size=16,
        score_seed=seed, **SETTINGS[setting],
    )
    result = run_scoring(ScoreSettings.from_flags(**flags), show_progress=False)
    records = [r for r in read_manifest(result.manifest_path) if r.has_score]
    report = json.loads(result.report_path.read_text())
    return {"scores": {r.key: r.score for r in records}, "report": report}


def measure(subject, setting: str, args) -> dict:
    root = args.output_dir
    runs = [score(subject, setting, seed, root, args.candidates) for seed in args.seeds]
    keys = sorted(runs[0]["scores"])
    a, b = (np.array([run["scores"][k] for k in keys]) for run in runs[:2])
    top = max(1, round(args.top_fraction * len(keys)))
    top_a, top_b = set(np.argsort(-a)[:top]), set(np.argsort(-b)[:top])
    report = runs[0]["report"]
    reliability = report.get("reliability") or {}
    timings = report["timings"]
    settings = report["settings"]["scoring"]
    return {
        "subject": subject.name, "setting": setting, "flags": SETTINGS[setting], "candidates": len(keys),
        "test_retest": spearman(a, b), "top_overlap": len(top_a & top_b) / top, "top_n": top,
        "builtin_full_run": reliability.get("full_run"), "builtin_half_run": reliability.get("half_run"),
        "builtin_spearman_brown": reliability.get("spearman_brown"), "limited_by": reliability.get("limited_by"),
        "rows_per_candidate": reliability.get("candidate_rows") or settings["num_score_timesteps"] * (
            2 if settings["antithetic"] else 1),
        "reference_rows": report["curvature"]["n_ref"], "curvature": report["curvature"]["strategy"],
        "seconds_per_candidate": timings["score"] / len(keys), "reference_seconds": timings["reference_gradients"],
    }


def table(rows: list[dict]) -> str:
    """Per setting: mean [min-max] over subjects of the measured test-retest, the built-in estimate, cost."""
    order = list(SETTINGS)
    lines = ["| setting | subjects | rows / candidate | reference rows | test-retest Spearman mean [min–max] | "
             "top-20 % overlap | built-in estimate (full run) | built-in half-run | s / candidate | reference s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in sorted({r["setting"] for r in rows}, key=order.index):
        group = [r for r in rows if r["setting"] == setting]
        rr = np.array([r["test_retest"] for r in group])
        est = [r["builtin_full_run"] for r in group if r["builtin_full_run"] is not None]
        half = [r["builtin_half_run"] for r in group if r["builtin_half_run"] is not None]
        lines.append(
            f"| {setting} | {len(group)} | {group[0]['rows_per_candidate']} | {group[0]['reference_rows']} | "
            f"{rr.mean():.3f} [{rr.min():.2f}–{rr.max():.2f}] | {np.mean([r['top_overlap'] for r in group]):.2f} | "
            f"{np.mean(est):.3f} | {np.mean(half):.3f} | "
            f"{np.mean([r['seconds_per_candidate'] for r in group]):.3f} | "
            f"{np.mean([r['reference_seconds'] for r in group]):.0f} |" if est else
            f"| {setting} | {len(group)} | {group[0]['rows_per_candidate']} | {group[0]['reference_rows']} | "
            f"{rr.mean():.3f} [{rr.min():.2f}–{rr.max():.2f}] | {np.mean([r['top_overlap'] for r in group]):.2f} | "
            f"– | – | {np.mean([r['seconds_per_candidate'] for r in group]):.3f} | "
            f"{np.mean([r['reference_seconds'] for r in group]):.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Reliability against UNet rows per candidate, one point per setting (mean over subjects)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting in sorted({r["setting"] for r in rows}):
        group = [r for r in rows if r["setting"] == setting]
        y = np.mean([r["test_retest"] for r in group])
        marker = "*" if setting == "new" else ("s" if setting.startswith("old") else "o")
        ax.scatter(group[0]["rows_per_candidate"], y, marker=marker, s=90 if setting == "new" else 30)
        ax.annotate(setting, (group[0]["rows_per_candidate"], y), fontsize=7, xytext=(4, -3),
                    textcoords="offset points")
    ax.axhline(0.9, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("UNet rows per candidate (the per-candidate cost)")
    ax.set_ylabel("test-retest Spearman (two --score_seed runs)")
    ax.set_title("ALBAT ranking reliability vs cost, mini-world (mean over subjects)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=6, help="the first N world subjects")
    p.add_argument("--subject_names", nargs="*", default=None, help="or these subjects")
    p.add_argument("--settings", nargs="+", default=["old", "new"], help=f"names, or 'all': {', '.join(SETTINGS)}")
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--top_fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output_dir", type=Path, default=REPO / "outputs" / "bench_reliability")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reliability.jsonl")
    p.add_argument("--keep_runs", action="store_true", help="keep each run's scoring folder (manifests)")
    p.add_argument("--table", action="store_true", help="print the tables and write the plot, then exit")
    args = p.parse_args()
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.is_file() else []
    if args.table:
        print(table(rows))
        plot(rows, args.out.with_suffix(".png"))
        return
    torch.set_num_threads(args.threads)
    settings = list(SETTINGS) if args.settings == ["all"] else args.settings
    subjects = ([s for s in WORLD_SUBJECTS if s.name in args.subject_names] if args.subject_names
                else WORLD_SUBJECTS[: args.subjects])
    done = {(r["subject"], r["setting"]) for r in rows}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine_info(), "commit": git_head(), "date": time.strftime("%Y-%m-%d")}
    for subject in subjects:
        for setting in settings:
            if (subject.name, setting) in done:
                continue
            started = time.perf_counter()
            row = measure(subject, setting, args) | meta
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            log(f"{subject.name} {setting}: test-retest {row['test_retest']:.3f}, built-in "
                f"{row['builtin_full_run']}, {time.perf_counter() - started:.0f}s")
            if not args.keep_runs:
                shutil.rmtree(args.output_dir / subject.name / setting, ignore_errors=True)


if __name__ == "__main__":
    main()
