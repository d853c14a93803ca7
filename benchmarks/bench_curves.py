#!/usr/bin/env python
"""Step curves on the mini-world: every world metric of every method at several training steps.

One LoRA per (pool, photos, method, subject, seed) is trained to the largest ``--checkpoints``
step with a checkpoint at each listed step (the schedule is constant, so checkpoint S of a long
run is the S-step run), and every checkpoint is scored with every world metric
(:func:`dreambat_world.metrics.evaluate_world`). From the rows it writes:

* the **step curve** of each method (mean over subjects and seeds at each step);
* **oracle headroom**: each method minus ``dreambooth`` and minus ``random``, paired over
  (subject, seed), at each step and photo count, ± SE, * beyond 2 SE;
* **equal subject exposure**: BAT at γ sees ``1 - γ`` of its batch as subject photos, so BAT at
  step S/(1-γ) is set against DreamBooth at step S; ``prior`` adds its class rows on top of a full
  instance batch, so it is set against DreamBooth at the same step S;
* **matched likeness** (the fronts): each method's prompt following (CLIP-T, prompt fidelity) read
  off its curve at fixed likeness levels (DINO, subject fidelity), minus ``dreambooth``'s and minus
  ``random``'s at the same level, paired over (subject, seed) and clustered by subject; the same for
  PRES (prior drift, lower is better) at matched DINO when the rows carry it;
* the **trade-off plot**: subject likeness (DINO, subject fidelity) against prompt following
  (CLIP-T, prompt fidelity), and DINO against PRES when the rows carry it, one curve per method
  over the steps.

Methods: ``dreambooth`` (no backbone data), ``prior`` (DreamBooth with prior preservation on
``--keep`` backbone-generated images of "a photo of a <class word>", shared by every subject and
run of that class word in ``OUTPUT/TAG/class_images/<word>/``), ``random``, ``clip``
(``--selection clip``, the world's CLIP-role encoder, nearest to the subject photos),
``clip_text`` (``--selection clip --clip_query text``: nearest to the text "a photo of a <class
word>", Custom Diffusion's real prior), ``oracle_clean`` / ``oracle_class`` / ``oracle_near``
(ground-truth selections, benchmark only: :mod:`dreambat_world.selection_truth`; ``oracle_clean``
is a random draw among the clean pairs, what avoiding junk alone is worth), ``albat`` (the
library's reliable defaults) and ``albat_bottom`` (the N lowest of the same ALBAT scores, a
validity check: if influence means anything it should do no better than random). ``dreambooth``, ``prior`` and the base backbone read no pool: their
rows serve every pool of the tag (:data:`POOL_FREE`). Every selection is mixed in at γ; ``dreambooth`` and ``prior`` have γ = 0.

    python scripts/make_world.py --skip_assets                 # the clean pool, once
    python scripts/make_world.py --skip_assets --noisy         # the LAION-like pool, once
    python -m benchmarks.bench_curves --tag steps --methods dreambooth --subjects all --seeds 0 \\
        --checkpoints 200 400 800 1600
    python -m benchmarks.bench_curves --tag headroom --methods dreambooth random clip oracle_class oracle_near \\
        --subjects 6 --seeds 0 1 --photos 1 2 5 --checkpoints 400 800
    python -m benchmarks.bench_curves --tag headroom --table    # tables and plot from the rows only

Every run is resumable (finished LoRAs, images and rows are reused). Rows:
``OUTPUT/TAG/results.jsonl``; tables: ``OUTPUT/TAG/summary.md``; plot: ``OUTPUT/TAG/tradeoff.png``
(the clean pool's where there is one), and ``tradeoff-<pool>.png`` for each pool when the rows hold several.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from benchmarks._measure import REPO, git_head, machine_info
from benchmarks.bench_quality import clustered, diff_text, fmt, paired, pick_subjects, subject_dir
from dreambat.albat import read_manifest, write_manifest
from dreambat.bat.config import BatSettings
from dreambat.bat.pipeline import run_bat
from dreambat.constants import LORA_WEIGHTS_NAME, SELECTION_MANIFEST_NAME
from dreambat.data.shards import ShardReader
from dreambat.inputs import file_digest
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, DEFAULT_NOISY_POOL_DIR, DEFAULT_POOL_DIR
from dreambat_world.metrics import WORLD_METRICS, evaluate_world
from dreambat_world.selection_truth import ORACLES, composition, oracle_manifest
from dreambat_world.subjects import subject_by_name

METHODS = ("dreambooth", "prior", "random", "clip", "clip_text", *ORACLES, "albat", "albat_bottom")
ORDER = ("base", *METHODS)
"""Methods in table order; ``base`` (the backbone without a LoRA) is the step-0 point of every curve."""
UNMIXED = ("dreambooth", "prior")
"""Methods without a γ-mixture: every instance slot of their batches is a subject photo (``prior``'s
class rows come on top of the instance batch)."""
POOL_FREE = (*UNMIXED, "base")
"""Methods that read no pool: a row of one pool is also theirs in every other (same subject, seed,
photos and step give the same LoRA and images), so they are trained and scored once."""
POOLS = {"clean": DEFAULT_POOL_DIR, "noisy": DEFAULT_NOISY_POOL_DIR}
LIKENESS = ("dino", "subject_fidelity")
PROMPT_FOLLOWING = ("clip_t", "prompt_fidelity")
PRIOR_DRIFT = "pres"
"""PRES, the drift of the class prior (lower is better); rows made before it existed lack it."""
MATCHED_LEVELS = 4
"""Likeness levels of the matched-likeness tables, evenly inside the span every method's curves reach."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=str(ASSETS_DIR / BACKBONE_DIR))
    p.add_argument("--pool", choices=list(POOLS), default="clean", help="which world pool the candidates come from")
    p.add_argument("--pool_dir", type=Path, default=None, help="the pool's shards (default: the --pool's folder)")
    p.add_argument("--output_dir", type=Path, default=REPO / "outputs/bench_curves")
    p.add_argument("--tag", default="steps", help="results go to OUTPUT/TAG")
    p.add_argument("--subjects", nargs="+", default=["all"], help="names, 'all', or N (the first N)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--photos", type=int, nargs="+", default=[5], help="subject photo counts (first N photos)")
    p.add_argument("--methods", nargs="+", default=["dreambooth"], choices=METHODS)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[200, 400, 800, 1600],
                   help="training steps at which every metric is measured")
    p.add_argument("--gamma", type=float, default=0.5, help="backbone share of BAT's batches")
    p.add_argument("--keep", type=int, default=60, help="backbone images kept by every selector")
    p.add_argument("--max_candidates", type=int, default=2000, help="candidates read from the pool")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--train_text_encoder", action="store_true", help="also train a text-encoder LoRA")
    p.add_argument("--train_text_encoder_ti", action="store_true",
                   help="pivotal tuning: new tokens for --instance_token (use TOK), trained with the LoRA")
    p.add_argument("--batch_size", type=int, default=4, help="instance slots per training batch")
    p.add_argument("--instance_token", default="sks", help="the identifier of the instance prompt")
    p.add_argument("--eval_checkpoints", type=int, nargs="+", default=None,
                   help="evaluate only these of --checkpoints (default: all); the others stay on disk")
    p.add_argument("--train_only", action="store_true",
                   help="train (and checkpoint) every LoRA, evaluate nothing; a later run without it evaluates")
    p.add_argument("--num_images", type=int, default=2, help="generated images per prompt")
    p.add_argument("--num_prompts", type=int, default=None, help="first N world prompts (default: all)")
    p.add_argument("--inference_steps", type=int, default=25)
    p.add_argument("--evaluators_dir", type=Path, default=None, help="world evaluators (default: the committed ones)")
    p.add_argument("--table", action="store_true", help="only rebuild the tables and plot from results.jsonl")
    return p.parse_args(argv)


def instance_prompt(args, word: str) -> str:
    return f"a photo of {args.instance_token} {word}".replace("  ", " ")


def class_prompt(word: str) -> str:
    """The class prompt of ``prior``'s generated images and ``clip_text``'s retrieval query."""
    return f"a photo of a {word}"


def train(method: str, args, subject: str, seed: int, photos: int, work: Path, shards: list[str],
          candidates: list) -> Path:
    """Train ``method`` to the last checkpoint step in ``work/method`` (resumes; reuses a finished run).

    ``candidates``: the pool samples every selector chooses from (the oracles rank them directly).

    ``prior`` trains each batch on ``--batch_size`` subject slots plus as many class slots
    (:class:`~dreambat.data.stream.TrainingStream` appends B class rows to the B instance rows), so
    its subject exposure per step is DreamBooth's. Its class images live in
    ``OUTPUT/TAG/class_images/<word>/``, generated once and shared by every subject, seed and photo
    count of that class word (a later run with a larger ``--keep`` generates only the missing ones).
    """
    out = work / method
    if (out / LORA_WEIGHTS_NAME).is_file():
        return out
    steps = sorted(args.checkpoints)
    word = subject_by_name(subject).class_word
    flags = dict(
        pretrained_model_name_or_path=args.backbone, instance_data_dir=str(subject_dir(subject, photos, work)),
        instance_prompt=instance_prompt(args, word), output_dir=str(out), seed=seed, resolution=32,
        random_flip=True, train_batch_size=args.batch_size, max_train_steps=steps[-1],
        learning_rate=args.learning_rate, rank=args.rank, train_text_encoder=args.train_text_encoder,
        checkpointing_steps=math.gcd(*steps), checkpoints_total_limit=None, report_to="none",
        resume_from_checkpoint="latest")
    if args.train_text_encoder_ti:
        flags |= dict(train_text_encoder_ti=True, token_abstraction=args.instance_token)
    if method in UNMIXED:
        flags["selection"] = "none"
        if method == "prior":
            flags |= dict(with_prior_preservation=True, class_prompt=class_prompt(word), num_class_images=args.keep,
                          class_data_dir=str(args.output_dir / args.tag / "class_images" / word),
                          prior_loss_weight=1.0)
    else:
        flags |= dict(backbone_shards=shards, max_candidates=args.max_candidates, num_backbone_samples=args.keep,
                      augmentation_ratio=args.gamma)
        if method in ORACLES:
            manifest = oracle_manifest(candidates, subject_by_name(subject), method,
                                       work / f"{method}_scores" / "selection.jsonl", seed=seed)
            flags |= dict(selection="albat", selection_manifest=str(manifest), keep_nonpositive=True)
        elif method in ("clip", "clip_text"):
            from dreambat_world.evaluators import EVALUATORS_DIR, world_evaluators

            e = world_evaluators(args.evaluators_dir or EVALUATORS_DIR)
            flags |= dict(selection="clip", clip_model=str(e.clip_model), clip_pretrained=str(e.clip_pretrained))
            if method == "clip_text":
                flags |= dict(clip_query="text", clip_query_prompt=class_prompt(word))
        elif method == "albat":
            flags |= dict(selection="albat", surrogate_steps=max(steps[0] // 2, 1), score_batch_size=16)
        elif method == "albat_bottom":
            manifest = bottom_manifest(train("albat", args, subject, seed, photos, work, shards, candidates)
                                       / SELECTION_MANIFEST_NAME, work / "albat_bottom_scores" / SELECTION_MANIFEST_NAME)
            flags |= dict(selection="albat", selection_manifest=str(manifest), keep_nonpositive=True)
        else:
            flags["selection"] = "random"
    run_bat(BatSettings.from_flags(**flags))
    return out


def bottom_manifest(albat: Path, path: Path) -> Path:
    """A manifest of ``albat``'s scored candidates with each score negated, at ``path``: the top-N rule
    on it keeps the N candidates ALBAT ranks lowest (skipped candidates stay skipped)."""
    records = [replace(r, score=None if r.score is None else -r.score, selected=None,
                                   split_scores=None) for r in read_manifest(albat)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(records, path, fingerprint={"negated": str(albat), "sha256": file_digest(albat)})
    return path


FIXED_SETTINGS = ("backbone", "checkpoints", "gamma", "keep", "max_candidates", "learning_rate", "rank",
                  "train_text_encoder", "train_text_encoder_ti", "batch_size", "instance_token", "num_images",
                  "num_prompts", "inference_steps", "evaluators_dir")
"""Settings every row of a tag shares; pools, photo counts, subjects, seeds and methods may be added.
A tag saved before a setting existed ran at its default."""


def check_settings(root: Path, args) -> None:
    """Stop before training when ``root`` holds rows made with other :data:`FIXED_SETTINGS`."""
    path = root / "settings.json"
    if not path.is_file() or not (root / "results.jsonl").is_file():
        return
    saved = {k: str(v) for k, v in vars(parse_args([])).items()} | json.loads(path.read_text())
    changed = [f"--{k} {saved.get(k)} -> {getattr(args, k)}" for k in FIXED_SETTINGS
               if k in saved and saved[k] != str(getattr(args, k))]
    if changed:
        sys.exit(f"{root} holds rows made with other settings ({'; '.join(changed)}); pass another --tag "
                 "so the two never mix.")


def lora_at(folder: Path, step: int, last: int) -> Path:
    return folder if step == last else folder / f"checkpoint-{step}"


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = args.output_dir / args.tag
    results = root / "results.jsonl"
    if args.table:
        write_tables(root, args.gamma)
        return
    pool_dir = args.pool_dir or REPO / POOLS[args.pool]
    shards = [str(p) for p in sorted(pool_dir.glob("shard-*.tar"))]
    if not shards and args.methods != ["dreambooth"]:
        flag = " --noisy" if args.pool == "noisy" else ""
        sys.exit(f"No pool shards in {pool_dir}; run `python scripts/make_world.py --skip_assets{flag}` first.")
    root.mkdir(parents=True, exist_ok=True)
    check_settings(root, args)
    (root / "settings.json").write_text(json.dumps({**{k: str(v) for k, v in vars(args).items()},
                                                    "commit": git_head(), "machine": machine_info()}, indent=2))
    candidates = list(ShardReader(shards, max_candidates=args.max_candidates)) if shards else []
    metadata = {c.key: c.metadata for c in candidates}
    done = {row_key(r["pool"], r["photos"], r["method"], r["subject"], r["seed"], r["step"])
            for r in map(json.loads, results.read_text().splitlines())} if results.is_file() else set()
    steps = sorted(args.checkpoints)
    eval_steps = sorted(set(args.eval_checkpoints or steps))
    if not set(eval_steps) <= set(steps):
        sys.exit(f"--eval_checkpoints {eval_steps} must be among --checkpoints {steps}.")
    for photos in args.photos:
        for subject in pick_subjects(args.subjects):
            for seed in args.seeds:
                todo = [(m, s) for m in args.methods for s in eval_steps
                        if row_key(args.pool, photos, m, subject, seed, s) not in done]
                if row_key(args.pool, photos, "base", subject, seed, 0) not in done:
                    todo.append(("base", 0))
                if not todo and not args.train_only:
                    continue
                work = root / "runs" / args.pool / f"photos{photos}" / subject / f"seed{seed}"
                seconds = {}
                for method in (args.methods if args.train_only else dict.fromkeys(m for m, _ in todo if m != "base")):
                    t0 = time.perf_counter()
                    train(method, args, subject, seed, photos, work, shards, candidates)
                    seconds[method] = round(time.perf_counter() - t0, 1)
                if args.train_only:
                    print(f"{args.pool} photos {photos} {subject} seed {seed}: trained {seconds}", flush=True)
                    continue
                loras = {f"{m}.{s}": None if m == "base" else lora_at(work / m, s, steps[-1]) for m, s in todo}
                t0 = time.perf_counter()
                word = subject_by_name(subject).class_word
                scores = evaluate_world(args.backbone, loras, [subject], work / "eval",
                                        instance_prompt=instance_prompt(args, "{}"), num_images=args.num_images,
                                        num_prompts=args.num_prompts, num_inference_steps=args.inference_steps,
                                        seed=seed, evaluators_dir=args.evaluators_dir, progress=False,
                                        unique_token=args.instance_token)
                eval_seconds = round(time.perf_counter() - t0, 1)
                with open(results, "a") as handle:
                    for score in scores:
                        method, step = score.method.rsplit(".", 1)
                        manifest = work / method / "selection.jsonl"
                        kept = composition(read_manifest(manifest), metadata, subject_by_name(subject)) \
                            if manifest.is_file() else None
                        row = {**asdict(score), "method": method, "step": int(step), "pool": args.pool,
                               "photos": photos, "seed": seed, "class_word": word,
                               "gamma": 0.0 if method in (*UNMIXED, "base") else args.gamma,
                               "train_seconds": seconds.get(method), "eval_seconds": eval_seconds,
                               "selection": kept}
                        handle.write(json.dumps(row) + "\n")
                print(f"{args.pool} photos {photos} {subject} seed {seed}: " + ", ".join(
                    f"{s.method} subj {s.subject_fidelity:.2f} dino {s.dino:.2f}" for s in scores), flush=True)
    if not args.train_only:
        write_tables(root, args.gamma)


def row_key(pool: str, photos: int, method: str, subject: str, seed: int, step: int) -> tuple:
    """What makes a row unique: :data:`POOL_FREE` methods' rows hold for every pool."""
    return ("any" if method in POOL_FREE else pool, photos, method, subject, seed, step)


# ----------------------------------------------------------------------------- tables


def load_rows(root: Path) -> list[dict]:
    """The tag's rows, with each :data:`POOL_FREE` row repeated for every other pool the rows have."""
    return with_pool_free_rows(read_rows(root / "results.jsonl"))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def with_pool_free_rows(rows: list[dict]) -> list[dict]:
    """``rows`` plus each :data:`POOL_FREE` row repeated for every other pool the rows have."""
    pools = sorted({r["pool"] for r in rows})
    shared = {}
    for r in rows:
        if r["method"] in POOL_FREE:
            shared.setdefault(row_key(**{k: r[k] for k in ("pool", "photos", "method", "subject", "seed", "step")}), r)
    have = {(r["pool"], r["photos"], r["method"], r["subject"], r["seed"], r["step"]) for r in rows}
    extra = [{**r, "pool": pool} for r in shared.values() for pool in pools
             if (pool, r["photos"], r["method"], r["subject"], r["seed"], r["step"]) not in have]
    return rows + extra


def curve_table(rows: list[dict]) -> str:
    """Per (pool, photos, method, step): runs and the mean of every metric over (subject, seed)."""
    lines = ["| pool | photos | method | step | runs | " + " | ".join(WORLD_METRICS) + " |",
             "|---|---|---|---|---|" + "---|" * len(WORLD_METRICS)]
    keys = sorted({(r["pool"], r["photos"], r["method"], r["step"]) for r in rows},
                  key=lambda k: (k[0], k[1], ORDER.index(k[2]) if k[2] in ORDER else 99, k[3]))
    for pool, photos, method, step in keys:
        own = [r for r in rows if (r["pool"], r["photos"], r["method"], r["step"]) == (pool, photos, method, step)]
        cells = []
        for metric in WORLD_METRICS:
            values = [r.get(metric) for r in own if r.get(metric) is not None]  # rows from before a metric lack it
            cells.append(fmt(float(np.mean(values)), metric) if values else "–")
        lines.append(f"| {pool} | {photos} | {method} | {step} | {len(own)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


EQUAL_STEP_METRICS = ("heldout_loss", "dino", "subject_fidelity", "clip_t", "prompt_fidelity")
"""The metrics of the equal-step and equal-exposure comparisons."""


def _difference(cells: dict, metric: str, diff: tuple[float, float, int] | None) -> dict | None:
    """One comparison as a record: ``cells`` (where and what), the metric, mean, SE, pairs and whether
    it lies beyond 2 SE; None without a difference (fewer than two subjects)."""
    if diff is None:
        return None
    mean, se, pairs = diff
    return {**cells, "metric": metric, "mean": mean, "se": se, "pairs": pairs, "beyond_2se": abs(mean) > 2 * se}


def equal_step_differences(rows: list[dict], reference: str, metrics=EQUAL_STEP_METRICS) -> list[dict]:
    """Each method minus ``reference`` at the same (pool, photos, step), paired over (subject, seed)
    and clustered by subject: one record per (pool, photos, step, method, metric)."""
    found = []
    for pool, photos, step in sorted({(r["pool"], r["photos"], r["step"]) for r in rows}):
        here = [r for r in rows if (r["pool"], r["photos"], r["step"]) == (pool, photos, step)]
        base = {(r["subject"], r["seed"]): r for r in here if r["method"] == reference}
        for method in [m for m in ORDER if m != reference and any(r["method"] == m for r in here)]:
            own = [r for r in here if r["method"] == method]
            cells = dict(pool=pool, photos=photos, step=step, method=method, reference=reference)
            found += [d for m in metrics if (d := _difference(cells, m, paired(own, base, m)))]
    return found


def exposure_step(method: str, step: int, gamma: float, reference: str = "dreambooth") -> int:
    """The step at which ``method`` has shown the subject photos as often as ``reference`` at
    ``step``. An unmixed method shows a full instance batch per step (``prior``'s class rows come on
    top of it), a γ-mixture ``1 - γ`` of one, so against DreamBooth a mixture needs ``step / (1 - γ)``,
    against another mixture the same step, and an unmixed method against a mixture ``step × (1 - γ)``."""
    share = {True: 1.0, False: 1.0 - gamma}
    return round(step * share[reference in UNMIXED] / share[method in UNMIXED])


def exposure_differences(rows: list[dict], gamma: float, metrics=EQUAL_STEP_METRICS,
                         reference: str = "dreambooth") -> list[dict]:
    """Each method at :func:`exposure_step` minus ``reference`` at step S (the same number of
    subject-photo views): one record per (pool, photos, S, method, metric), with ``method_step``."""
    found = []
    for pool, photos in sorted({(r["pool"], r["photos"]) for r in rows}):
        here = [r for r in rows if (r["pool"], r["photos"]) == (pool, photos)]
        for step in sorted({r["step"] for r in here if r["method"] == reference}):
            base = {(r["subject"], r["seed"]): r for r in here if r["method"] == reference and r["step"] == step}
            for method in [m for m in METHODS if m != reference]:
                method_step = exposure_step(method, step, gamma, reference)
                own = [r for r in here if r["method"] == method and r["step"] == method_step]
                cells = dict(pool=pool, photos=photos, step=step, method_step=method_step, method=method,
                             reference=reference)
                found += [d for m in metrics if (d := _difference(cells, m, paired(own, base, m)))]
    return found


def value_at(curve: list[tuple[float, float]], level: float) -> float | None:
    """``y`` where the path through ``curve`` (``(x, y)`` points in step order, linear between
    consecutive points) first reaches ``x = level``; None if it never does."""
    if len(curve) == 1 and curve[0][0] == level:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 == level:
            return y0
        if min(x0, x1) <= level <= max(x0, x1):
            return y0 + (level - x0) / (x1 - x0) * (y1 - y0)
    return None


def curves(rows: list[dict], x_metric: str, y_metric: str) -> dict[tuple, list[tuple[float, float]]]:
    """``(pool, photos, method, subject, seed) -> [(x, y), ...]`` in step order, each starting at the
    backbone's own point (the ``base`` row, step 0) where the rows have it; points missing either
    metric are left out."""
    found: dict[tuple, list[tuple[int, float, float]]] = {}
    base = {(r["pool"], r["photos"], r["subject"], r["seed"]): r for r in rows if r["method"] == "base"}
    for r in rows:
        if r["method"] == "base":
            continue
        key = (r["pool"], r["photos"], r["method"], r["subject"], r["seed"])
        if key not in found:
            start = base.get((r["pool"], r["photos"], r["subject"], r["seed"]))
            found[key] = [] if start is None else [(0, start.get(x_metric), start.get(y_metric))]
        found[key].append((r["step"], r.get(x_metric), r.get(y_metric)))
    return {key: [(x, y) for _, x, y in sorted(points, key=lambda p: p[0]) if x is not None and y is not None]
            for key, points in found.items()}


def likeness_levels(paths: dict[tuple, list[tuple[float, float]]], pool: str, photos: int,
                    n: int = MATCHED_LEVELS) -> list[float]:
    """``n`` likeness levels evenly inside the span every method's curves reach at (pool, photos):
    from the highest over methods of the mean (over subject-seed pairs) lowest point of a curve to
    the lowest over methods of the mean highest point, ends left out, rounded to 3 decimals.
    Empty when the methods' spans do not overlap."""
    spans = {}
    for (p, ph, method, _, _), curve in paths.items():
        if (p, ph) == (pool, photos) and curve:
            xs = [x for x, _ in curve]
            spans.setdefault(method, []).append((min(xs), max(xs)))
    if not spans:
        return []
    low = max(float(np.mean([lo for lo, _ in s])) for s in spans.values())
    high = min(float(np.mean([hi for _, hi in s])) for s in spans.values())
    if high <= low:
        return []
    return [round(low + (high - low) * (k + 1) / (n + 1), 3) for k in range(n)]


def matched_differences(rows: list[dict], reference: str, x_metric: str, y_metrics: tuple[str, ...]) -> list[dict]:
    """Each method's ``y_metrics`` at fixed levels of ``x_metric`` (:func:`likeness_levels` of the
    first y metric's curves, read off each (subject, seed) curve by :func:`value_at`) minus
    ``reference``'s at the same level, paired over the (subject, seed) whose two curves both reach it,
    ± SE clustered by subject (:func:`~benchmarks.bench_quality.clustered`): one record per (pool,
    photos, level, method, y metric), with ``x_metric`` and ``level``."""
    paths = {y: curves(rows, x_metric, y) for y in y_metrics}
    found = []
    for pool, photos in sorted({(r["pool"], r["photos"]) for r in rows}):
        methods = [m for m in METHODS if m != reference and any(
            r["method"] == m and (r["pool"], r["photos"]) == (pool, photos) for r in rows)]
        for level in likeness_levels(paths[y_metrics[0]], pool, photos):
            for method in methods:
                cells = dict(pool=pool, photos=photos, x_metric=x_metric, level=level, method=method,
                             reference=reference)
                for y in y_metrics:
                    pairs = []
                    for (p, ph, m, subject, seed), curve in paths[y].items():
                        if (p, ph, m) != (pool, photos, method):
                            continue
                        own = value_at(curve, level)
                        ref = value_at(paths[y].get((pool, photos, reference, subject, seed), []), level)
                        if own is not None and ref is not None:
                            pairs.append((subject, own - ref))
                    if d := _difference(cells, y, clustered(pairs)):
                        found.append(d)
    return found


def _render(differences: list[dict], columns: tuple[str, ...], metrics: tuple[str, ...],
            header: tuple[str, ...]) -> str:
    """A markdown table of ``differences``: one line per distinct ``columns`` value (in first-seen
    order), the pair count (the most over its metrics), then each metric's difference ± SE (* beyond
    2 SE; – where it has none). Empty when there are no differences."""
    lines: dict[tuple, dict[str, dict]] = {}
    for d in differences:
        lines.setdefault(tuple(d[c] for c in columns), {})[d["metric"]] = d
    if not lines:
        return ""
    text = ["| " + " | ".join(header) + " | pairs | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
            "|" + "---|" * (len(header) + 1 + len(metrics))]
    for cells, by_metric in lines.items():
        shown = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells]
        n = max(d["pairs"] for d in by_metric.values())
        text.append(f"| {' | '.join(shown)} | {n} | " + " | ".join(
            diff_text((by_metric[m]["mean"], by_metric[m]["se"], by_metric[m]["pairs"]), m) if m in by_metric
            else "–" for m in metrics) + " |")
    return "\n".join(text) + "\n"


def difference_table(rows: list[dict], reference: str, metrics=EQUAL_STEP_METRICS) -> str:
    """:func:`equal_step_differences` as a table."""
    return _render(equal_step_differences(rows, reference, metrics), ("pool", "photos", "step", "method"),
                   tuple(metrics), ("pool", "photos", "step", "method"))


def exposure_table(rows: list[dict], gamma: float) -> str:
    """:func:`exposure_differences` as a table."""
    return _render(exposure_differences(rows, gamma), ("pool", "photos", "step", "method_step", "method"),
                   EQUAL_STEP_METRICS, ("pool", "photos", "DreamBooth step", "method step", "method"))


def matched_table(rows: list[dict], reference: str, x_metric: str, y_metrics: tuple[str, ...]) -> str:
    """:func:`matched_differences` as a table."""
    return _render(matched_differences(rows, reference, x_metric, y_metrics),
                   ("pool", "photos", "level", "method"), tuple(y_metrics), ("pool", "photos", x_metric, "method"))


def composition_table(rows: list[dict]) -> str:
    """What each selector kept (share of the kept images) against the scored pool."""
    names = ("class", "color", "pattern", "bad_caption", "degraded")
    lines = ["| pool | method | runs | " + " | ".join(f"{n} kept / pool" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    found = False
    for pool in sorted({r["pool"] for r in rows}):
        for method in METHODS:
            own = [r for r in rows if r["pool"] == pool and r["method"] == method]
            last = max((r["step"] for r in own), default=None)
            sel = [r["selection"] for r in own if r.get("selection") and r["step"] == last]
            if not sel:
                continue
            found = True
            cells = [f"{np.mean([s[f'kept_{n}'] for s in sel]):.3f} / {np.mean([s[f'pool_{n}'] for s in sel]):.3f}"
                     for n in names]
            lines.append(f"| {pool} | {method} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if found else ""


def has_metric(rows: list[dict], metric: str) -> bool:
    """Whether any row carries ``metric`` (rows made before a metric existed lack it)."""
    return any(r.get(metric) is not None for r in rows)


def tradeoff_plot(rows: list[dict], path: Path, pool: str | None = None, photos: int | None = None) -> Path | None:
    """Subject likeness (x) against prompt following (y), one curve per method over the steps;
    one panel per (likeness, prompt) metric pair, and DINO against PRES when the rows carry it;
    ``pool`` (default: the clean pool where the rows have it), ``photos`` (default: the largest count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if pool is None:
        pool = "clean" if any(r["pool"] == "clean" for r in rows) else rows[0]["pool"]
    if photos is None:
        photos = max(r["photos"] for r in rows if r["pool"] == pool)
    here = [r for r in rows if r["pool"] == pool and r["photos"] == photos]
    panels = list(zip(LIKENESS, PROMPT_FOLLOWING)) + ([("dino", PRIOR_DRIFT)] if has_metric(here, PRIOR_DRIFT) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    others = sorted({r["method"] for r in here} - set(ORDER))
    for ax, (x_metric, y_metric) in zip(axes, panels):
        for method in [m for m in (*METHODS, *others) if any(r["method"] == m for r in here)]:
            points = []
            for step in sorted({r["step"] for r in here if r["method"] in (method, "base")}):
                own = [r for r in here if r["method"] in (method, "base") and r["step"] == step]
                x = [r[x_metric] for r in own if r.get(x_metric) is not None]
                y = [r[y_metric] for r in own if r.get(y_metric) is not None]
                if x and y:
                    points.append((float(np.mean(x)), float(np.mean(y)), step))
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
            for x, y, step in points:
                ax.annotate(str(step), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"subject likeness: {x_metric}")
        ax.set_ylabel(f"prior drift: {y_metric} (lower is better)" if y_metric == PRIOR_DRIFT
                      else f"prompt following: {y_metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n = len({(r["subject"], r["seed"]) for r in here})
    fig.suptitle(f"Likeness vs prompt following over training steps ({pool} pool, {photos} photos, "
                 f"{n} subject-seed pairs; labels: step)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_tables(root: Path, gamma: float) -> str:
    rows = load_rows(root)
    parts = ["## Step curves (mean over subject-seed pairs)", "", curve_table(rows)]
    clustering = "± SE over subjects (each subject's seeds averaged first), * beyond 2 SE"
    for reference in ("dreambooth", "random"):
        table = difference_table(rows, reference)
        if table:
            parts += [f"## Each method minus {reference} at equal steps (paired over (subject, seed), {clustering})",
                      "", table]
    table = exposure_table(rows, gamma)
    if table:
        parts += [f"## At equal subject exposure (a γ-mixture at γ = {gamma} trains 1/(1-γ) times the steps; "
                  "prior adds its class rows on top of a full instance batch: the same step; "
                  f"{clustering})", "", table]
    matched = [(x, PROMPT_FOLLOWING, "prompt following") for x in LIKENESS]
    if has_metric(rows, PRIOR_DRIFT):
        matched.append(("dino", (PRIOR_DRIFT,), "PRES (lower is better)"))
    for x_metric, y_metrics, what in matched:
        for reference in ("dreambooth", "random"):
            table = matched_table(rows, reference, x_metric, y_metrics)
            if table:
                parts += [f"## {what[0].upper() + what[1:]} at matched {x_metric}, minus {reference} (read off each "
                          f"(subject, seed) curve, linear in {x_metric} between checkpoints, base at step 0; pairs: "
                          f"(subject, seed) whose two curves reach the level; {clustering})", "", table]
    table = composition_table(rows)
    if table:
        parts += ["## What each selector kept (share of kept images / share of the pool, last step's runs)", "",
                  table]
    text = "\n".join(parts)
    (root / "summary.md").write_text(text)
    tradeoff_plot(rows, root / "tradeoff.png")
    pools = sorted({r["pool"] for r in rows})
    if len(pools) > 1:  # one plot per pool besides the default one
        for pool in pools:
            tradeoff_plot(rows, root / f"tradeoff-{pool}.png", pool)
    print(text)
    return text


if __name__ == "__main__":
    main()
