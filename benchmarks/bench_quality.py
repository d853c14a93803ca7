#!/usr/bin/env python
"""Does BAT help? Methods side by side on the mini-world, at equal final-training steps.

For every (subject, seed) it trains one LoRA per method on the world backbone, then scores all
of them with every world metric (:func:`dreambat_world.metrics.evaluate_world`: held-out
denoising loss, DINO-role, CLIP-I, CLIP-T, attribute-classifier subject and prompt fidelity)
and checks what the selection kept (do kept backbone images share the subject's shape, colour,
pattern more often than the scored pool does?).

    python scripts/make_world.py                      # the 40k-image pool, once (42 s)
    python benchmarks/bench_quality.py --subjects 4 --seeds 0 1 2
    python benchmarks/bench_quality.py --tag gamma0.9 --gamma 0.9 --methods dreambooth exact

Methods: ``dreambooth`` (no backbone data), ``prior`` (DreamBooth with prior preservation on
backbone-generated class images), ``random`` (BAT, random backbone selection), ``exact``,
``datainf``, ``identity`` (BAT with ALBAT and that curvature). The three ALBAT methods share one
surrogate per (subject, seed). Opt-in: ``bottom`` trains on the ``--keep`` candidates with the
*lowest* ``exact`` scores (its manifest re-ranked by -Z), a check that the scores carry signal:
if ALBAT's ranking means anything, the bottom of it should help least. Every run is resumable: finished LoRAs and images are reused.
Results: ``OUTPUT/TAG/results.jsonl`` (one row per method, subject, seed) and
``OUTPUT/TAG/summary.md`` (mean ± std over seeds of the subject means, and paired differences
to ``dreambooth`` with their standard error over subjects).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np


from benchmarks._measure import REPO  # noqa: E402
from dreambat.albat import read_manifest, write_manifest  # noqa: E402
from dreambat.bat.config import BatSettings  # noqa: E402
from dreambat.bat.pipeline import run_bat  # noqa: E402
from dreambat.constants import LORA_WEIGHTS_NAME  # noqa: E402
from dreambat.data.shards import ShardReader  # noqa: E402
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, DEFAULT_POOL_DIR, SUBJECTS_DIR  # noqa: E402
from dreambat_world.metrics import WORLD_METRICS, evaluate_world  # noqa: E402
from dreambat_world.subjects import WORLD_SUBJECTS, subject_by_name  # noqa: E402

METHODS = ("dreambooth", "prior", "random", "exact", "datainf", "identity")
OPT_IN_METHODS = ("bottom",)
ALBAT = ("exact", "datainf", "identity")
LOWER_IS_BETTER = {"heldout_loss"}
DECIMALS = {"heldout_loss": 5}
"""Decimals a metric is printed with (default 4): held-out losses differ in the fourth decimal."""


def fmt(value: float, metric: str, sign: bool = False) -> str:
    return f"{value:{'+' if sign else ''}.{DECIMALS.get(metric, 4)}f}"


def paired(rows: list[dict], base: dict, metric: str) -> tuple[float, float, int] | None:
    """Mean, standard error and pair count of ``row[metric] - base[(subject, seed)][metric]`` over
    the rows that have a base row, clustered by subject (:func:`clustered`); None with fewer than
    two subjects (no standard error)."""
    diffs = [(r["subject"], r[metric] - base[(r["subject"], r["seed"])][metric]) for r in rows
             if (r["subject"], r["seed"]) in base and r.get(metric) is not None
             and base[(r["subject"], r["seed"])].get(metric) is not None]
    return clustered(diffs)


def clustered(diffs: list[tuple[str, float]]) -> tuple[float, float, int] | None:
    """``(mean, SE, pairs)`` of paired differences ``(subject, Δ)`` clustered by subject.

    The seeds of a subject share its photos, so they are not independent draws: each subject's
    differences are averaged first, and the mean and the standard error are those of the subject
    means. With one seed per subject this is the plain paired mean and SE. None with fewer than
    two subjects.
    """
    by_subject: dict[str, list[float]] = {}
    for subject, diff in diffs:
        by_subject.setdefault(subject, []).append(diff)
    if len(by_subject) < 2:
        return None
    means = [float(np.mean(values)) for values in by_subject.values()]
    return float(np.mean(means)), float(np.std(means, ddof=1) / np.sqrt(len(means))), len(diffs)


def diff_text(diff: tuple[float, float, int], metric: str, star: bool = True) -> str:
    """``+0.0012 ± 0.0003*``: a paired difference, its standard error, * beyond 2 SE (with ``star``)."""
    mean, se, _ = diff
    return f"{fmt(mean, metric, sign=True)} ± {fmt(se, metric)}{'*' if star and abs(mean) > 2 * se else ''}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=str(ASSETS_DIR / BACKBONE_DIR))
    p.add_argument("--pool_dir", type=Path, default=REPO / DEFAULT_POOL_DIR)
    p.add_argument("--output_dir", type=Path, default=REPO / "outputs/bench_quality")
    p.add_argument("--tag", default="main", help="results go to OUTPUT/TAG (one tag per setting)")
    p.add_argument("--subjects", nargs="+", default=["all"],
                   help="world subject names, 'all', or a number N (the first N subjects)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + OPT_IN_METHODS)
    p.add_argument("--steps", type=int, default=200, help="final-training steps, the same for every method")
    p.add_argument("--surrogate_steps", type=int, default=100)
    p.add_argument("--gamma", type=float, default=0.5, help="backbone share of the final training batches")
    p.add_argument("--max_candidates", type=int, default=2000, help="candidates read from the pool")
    p.add_argument("--candidate_ratio", type=float, default=1.0)
    p.add_argument("--keep", type=int, default=100, help="backbone images kept (random: the same number)")
    p.add_argument("--num_subject_images", type=int, default=None, help="train on the first N photos (default: all 5)")
    p.add_argument("--num_score_timesteps", type=int, default=2)
    p.add_argument("--num_images", type=int, default=2, help="generated images per prompt")
    p.add_argument("--num_prompts", type=int, default=None, help="first N world prompts (default: all)")
    p.add_argument("--inference_steps", type=int, default=25)
    return p.parse_args(argv)


def pick_subjects(spec: list[str]) -> list[str]:
    if spec == ["all"]:
        return [s.name for s in WORLD_SUBJECTS]
    if len(spec) == 1 and spec[0].isdigit():
        return [s.name for s in WORLD_SUBJECTS[: int(spec[0])]]
    return [subject_by_name(name).name for name in spec]


def subject_dir(name: str, n: int | None, work: Path) -> Path:
    """The subject's training photos; with ``n``, a folder holding only the first ``n``."""
    source = ASSETS_DIR / SUBJECTS_DIR / name / "train"
    if n is None:
        return source
    target = work / "photos"
    if not target.is_dir():
        target.mkdir(parents=True)
        for path in sorted(source.iterdir())[:n]:
            shutil.copy(path, target / path.name)
    return target


def train_method(method: str, args, subject: str, seed: int, work: Path, shards: list[str]) -> Path:
    out = work / method
    if (out / LORA_WEIGHTS_NAME).is_file():
        return out
    word = subject_by_name(subject).class_word
    flags = dict(
        pretrained_model_name_or_path=args.backbone, instance_data_dir=str(subject_dir(subject, args.num_subject_images, work)),
        instance_prompt=f"a photo of sks {word}", output_dir=str(out), seed=seed, resolution=32,
        random_flip=True, train_batch_size=4, max_train_steps=args.steps, learning_rate=1e-3, rank=8,
        checkpointing_steps=10 ** 9, report_to="none")
    selection = {"dreambooth": "none", "prior": "none", "random": "random"}.get(method, "albat")
    if method == "bottom":
        run_bat(BatSettings.from_flags(**flags, selection="albat", selection_manifest=str(negated_manifest(work)),
                                       num_backbone_samples=args.keep, keep_nonpositive=True,
                                       augmentation_ratio=args.gamma))
        return out
    if selection != "none":
        flags |= dict(
            selection=selection, backbone_shards=shards, max_candidates=args.max_candidates,
            candidate_ratio=args.candidate_ratio, surrogate_steps=args.surrogate_steps,
            num_score_timesteps=args.num_score_timesteps, score_batch_size=16,
            curvature=method if method in ALBAT else "auto", num_backbone_samples=args.keep,
            augmentation_ratio=args.gamma)
    else:
        flags["selection"] = "none"
    if method in ALBAT and method != "exact" and (work / "exact" / "surrogate").is_dir():
        flags["surrogate_lora"] = str(work / "exact" / "surrogate")
    if method == "prior":
        flags |= dict(with_prior_preservation=True, class_prompt=f"a {word}",
                      class_data_dir=str(work.parent.parent / "class_images" / word), num_class_images=50)
    run_bat(BatSettings.from_flags(**flags))
    return out


def negated_manifest(work: Path) -> Path:
    """``exact``'s manifest with every score negated (``work/bottom_scores/selection.jsonl``), so that
    the top-N rule keeps the N lowest original scores."""
    source = work / "exact" / "selection.jsonl"
    if not source.is_file():
        raise SystemExit(f"'bottom' needs the exact run's manifest {source}; run --methods exact first.")
    target = work / "bottom_scores" / "selection.jsonl"
    records = [replace(r, score=-r.score if r.score is not None else None, selected=None)
               for r in read_manifest(source)]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(records, target, fingerprint={"source": str(source), "scores": "negated"})
    return target


def pool_attributes(shards: list[str], limit: int) -> dict[str, dict]:
    return {s.key: s.metadata.get("attributes", {}) for s in ShardReader(shards, max_candidates=limit)}


def selection_check(manifest: Path, attributes: dict[str, dict], subject: str) -> dict:
    """Share of kept vs scored candidates that show the subject's shape / colour / pattern."""
    d = subject_by_name(subject).design
    records = [r for r in read_manifest(manifest) if r.status != "skipped"]  # random selection has no scores

    def share(rows, test):
        return float(np.mean([test(attributes[r.key]) for r in rows])) if rows else None

    tests = {"shape": lambda a: d.shape in a.get("shapes", []), "color": lambda a: d.color in a.get("colors", []),
             "pattern": lambda a: d.pattern in a.get("patterns", [])}
    kept = [r for r in records if r.selected]
    return {f"{which}_{name}": share(rows, test) for name, test in tests.items()
            for which, rows in (("kept", kept), ("pool", records))}


def summarise(rows: list[dict], methods: list[str]) -> str:
    """Mean ± std over seeds of the per-seed subject means; paired differences to dreambooth."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"{len({r['subject'] for r in rows})} subjects × {len(seeds)} seeds. Mean ± std over seeds "
             "of the mean over subjects; Δ = paired difference to dreambooth over (subject, seed), ± its "
             "standard error over subjects (each subject's seeds averaged first); * where |Δ| > 2 SE.", "",
             "| method | runs | " + " | ".join(WORLD_METRICS) + " |", "|---|---|" + "---|" * len(WORLD_METRICS)]
    base = {(r["subject"], r["seed"]): r for r in rows if r["method"] == "dreambooth"}
    for method in methods:
        cells = []
        own = [r for r in rows if r["method"] == method]
        for metric in WORLD_METRICS:
            per_seed = [[r.get(metric) for r in own if r["seed"] == s and r.get(metric) is not None] for s in seeds]
            per_seed = [float(np.mean(values)) for values in per_seed if values]
            cell = f"{fmt(np.mean(per_seed), metric)} ± {fmt(np.std(per_seed), metric)}" if per_seed else "–"
            diff = paired(own, base, metric) if method != "dreambooth" else None
            if diff is not None:
                cell += f" (Δ {diff_text(diff, metric)})"
            cells.append(cell)
        runs = f"{len(own)} ({len({r['seed'] for r in own})} seeds)"
        lines.append(f"| {method} | {runs} | " + " | ".join(cells) + " |")
    lines += _versus_random(rows, methods)
    checks = [r for r in rows if r.get("selection")]
    if checks:
        lines += ["", "What the selection kept (share showing the subject's attribute; kept vs the scored pool):", "",
                  "| method | shape kept / pool | colour kept / pool | pattern kept / pool |", "|---|---|---|---|"]
        for method in methods:
            sel = [r["selection"] for r in checks if r["method"] == method]
            if sel:
                cells = [f"{np.mean([s[f'kept_{a}'] for s in sel]):.3f} / {np.mean([s[f'pool_{a}'] for s in sel]):.3f}"
                         for a in ("shape", "color", "pattern")]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_subject(rows: list[dict], methods: list[str]) -> str:
    """Per subject, the mean over seeds of the held-out loss difference of each method to DreamBooth."""
    others = [m for m in methods if m != "dreambooth"]
    base = {(r["subject"], r["seed"]): r["heldout_loss"] for r in rows if r["method"] == "dreambooth"}
    lines = ["Per subject: DreamBooth's held-out loss and each method's paired difference to it, mean over seeds:", "",
             "| subject | class | seeds | dreambooth | " + " | ".join(f"Δ {m}" for m in others) + " |",
             "|---|---|---|---|" + "---|" * len(others)]
    for subject in sorted({r["subject"] for r in rows}):
        own = [r for r in rows if r["subject"] == subject]
        seeds = sorted({r["seed"] for r in own if (subject, r["seed"]) in base})
        if not seeds:
            continue
        cells = []
        for method in others:
            diffs = [r["heldout_loss"] - base[(subject, r["seed"])] for r in own
                     if r["method"] == method and (subject, r["seed"]) in base]
            cells.append(fmt(np.mean(diffs), "heldout_loss", sign=True) if diffs else "–")
        loss = np.mean([base[(subject, s)] for s in seeds])
        lines.append(f"| {subject} | {own[0]['class_word']} | {len(seeds)} | {fmt(loss, 'heldout_loss')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _versus_random(rows: list[dict], methods: list[str]) -> list[str]:
    """Lines of a table: each ALBAT curvature minus random selection, paired over (subject, seed),
    and how many of those pairs have the lower held-out loss."""
    albat = [m for m in (*ALBAT, *OPT_IN_METHODS) if m in methods]
    if "random" not in methods or not albat:
        return []
    base = {(r["subject"], r["seed"]): r for r in rows if r["method"] == "random"}
    lines = ["", "ALBAT against random selection of the same number of backbone images (paired over "
             "(subject, seed), ± standard error over subjects, * where |Δ| > 2 SE; last column: pairs where ALBAT's "
             "held-out loss is lower):", "",
             "| method | n | " + " | ".join(f"Δ {m}" for m in WORLD_METRICS) + " | lower loss |",
             "|---|---|" + "---|" * (len(WORLD_METRICS) + 1)]
    for method in albat:
        own = [r for r in rows if r["method"] == method and (r["subject"], r["seed"]) in base]
        diffs = [paired(own, base, metric) for metric in WORLD_METRICS]
        cells = [diff_text(d, m) if d else "–" for d, m in zip(diffs, WORLD_METRICS)]
        wins = sum(r["heldout_loss"] < base[(r["subject"], r["seed"])]["heldout_loss"] for r in own)
        lines.append(f"| {method} | {len(own)} | " + " | ".join(cells) + f" | {wins}/{len(own)} |")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shards = [str(p) for p in sorted(args.pool_dir.glob("shard-*.tar"))]
    if not shards:
        sys.exit(f"No pool shards in {args.pool_dir}; run `python scripts/make_world.py` first.")
    root = args.output_dir / args.tag
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    attributes = pool_attributes(shards, args.max_candidates)
    results_path = root / "results.jsonl"
    done = {(r["method"], r["subject"], r["seed"]) for r in map(json.loads, results_path.read_text().splitlines())} \
        if results_path.is_file() else set()
    methods = list(args.methods)
    if any(m in ALBAT for m in methods):  # exact first: the others reuse its surrogate / scores
        methods = [m for m in methods if m not in ALBAT + OPT_IN_METHODS] + \
            [m for m in ALBAT + OPT_IN_METHODS if m in methods]
    for subject in pick_subjects(args.subjects):
        for seed in args.seeds:
            todo = [m for m in methods if (m, subject, seed) not in done]
            if not todo:
                continue
            work = root / "runs" / subject / f"seed{seed}"
            timings = {}
            for method in methods:
                t0 = time.perf_counter()
                train_method(method, args, subject, seed, work, shards)
                timings[method] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            word = subject_by_name(subject).class_word
            scores = evaluate_world(args.backbone, {m: work / m for m in methods}, [subject], work / "eval",
                                    instance_prompt="a photo of sks {}", num_images=args.num_images,
                                    num_prompts=args.num_prompts, num_inference_steps=args.inference_steps,
                                    progress=False)
            eval_seconds = round(time.perf_counter() - t0, 1)
            with open(results_path, "a") as handle:
                for score in scores:
                    if score.method not in todo:
                        continue
                    manifest = work / score.method / "selection.jsonl"
                    row = {**asdict(score), "seed": seed, "class_word": word, "train_seconds": timings[score.method],
                           "eval_seconds": eval_seconds,
                           "selection": selection_check(manifest, attributes, subject) if manifest.is_file() else None}
                    handle.write(json.dumps(row) + "\n")
            print(f"{subject} seed {seed}: " + ", ".join(
                f"{s.method} loss {s.heldout_loss:.4f} subj {s.subject_fidelity:.2f}" for s in scores), flush=True)
    rows = [json.loads(line) for line in results_path.read_text().splitlines()]
    summary = summarise(rows, methods) + "\n" + per_subject(rows, methods)
    (root / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
