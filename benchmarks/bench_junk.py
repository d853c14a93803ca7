"""Does ALBAT prefer web junk? What each way of ranking keeps from the world's LAION-like noisy pool.

For each subject: the demo's surrogate recipe (200 steps), then complete ``run_scoring`` runs over the
first ``--candidates`` records of the noisy pool (``scripts/make_world.py --noisy``), one per
``--score_normalization`` and ``--score_seed``. Every candidate's score, loss and gradient norm is
kept (one JSON line per run in ``--output``), and, once, every candidate's ground truth (its noise
kinds) and its caption–image cosine under the world's CLIP-role encoder (``pool.jsonl``).

``--table`` reads those rows and prints, per way of ranking (Z, the candidate cosine Z/‖∇ℓ‖, the
per-draw cosine, each with and without a caption–image threshold), the share of each noise kind
in the top and bottom N (N = 10, 20, 60, 200) against the pool's, averaged over subjects, and the
test-retest Spearman of two score seeds; ``--plot`` draws score against gradient norm and loss.

    python scripts/make_world.py --noisy --skip_assets --n 2000 --per_shard 1000
    python -m benchmarks.bench_junk --subjects 0 1 2 --output benchmarks/results/junk/runs-a.jsonl
    python -m benchmarks.bench_junk --subjects 3 4 5 --output benchmarks/results/junk/runs-b.jsonl
    python -m benchmarks.bench_junk --table --plot
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import REPO, git_head, log, machine_info
from benchmarks.bench_reliability import surrogate
from dreambat.albat import AlbatSelection, ManifestRecord, read_manifest, spearman
from dreambat.data.shards import ShardReader
from dreambat.scoring.config import ScoreSettings
from dreambat.scoring.consistency import CaptionFilter
from dreambat.scoring.run import run_scoring
from dreambat.eval.encoders import ClipEncoder
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, DEFAULT_NOISY_POOL_DIR, SUBJECTS_DIR
from dreambat_world.evaluators import world_evaluators
from dreambat_world.subjects import WORLD_SUBJECTS

RESULTS = REPO / "benchmarks" / "results" / "junk"
KINDS = ("mismatched", "partly_wrong", "degraded", "offdomain", "duplicate")
TOPS = (10, 20, 60, 200)
SURROGATE_STEPS = 200


def noise_kinds(metadata: dict) -> dict[str, bool]:
    """The ground truth of one noisy-pool record, by the kinds the junk issue counts."""
    fate = metadata.get("noise") or {}
    return {
        "mismatched": fate.get("caption") == "mismatched",
        "partly_wrong": fate.get("caption") == "partly_wrong",
        "degraded": fate.get("image") in ("jpeg", "blur", "overlay"),
        "offdomain": fate.get("image") == "offdomain",
        "duplicate": fate.get("duplicate_of") is not None,
    }


def pool_rows(shard: str, candidates: int, path: Path) -> list[dict]:
    """Every candidate's key, noise kinds and caption–image cosine (computed once, then read back)."""
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines()]
    samples = list(ShardReader(shard, max_candidates=candidates))
    found = world_evaluators()
    encoder = ClipEncoder.load(found.clip_model, str(found.clip_pretrained), device="cpu")
    cosines = CaptionFilter(encoder, -1.0).cosines(samples)
    rows = [{"key": s.key, "index": s.index, "clip_score": c, **noise_kinds(s.metadata)}
            for s, c in zip(samples, cosines)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def score_run(subject, normalization: str, seed: int, args) -> dict:
    """One complete scoring run; its scores, losses and gradient norms by key."""
    root = args.work_dir
    out = root / subject.name / normalization / f"seed{seed}"
    flags = dict(
        pretrained_model_name_or_path=str(ASSETS_DIR / BACKBONE_DIR),
        instance_data_dir=str(ASSETS_DIR / SUBJECTS_DIR / subject.name / "train"),
        instance_prompt=f"a photo of sks {subject.class_word}", output_dir=str(out), resolution=32,
        surrogate_lora=str(surrogate(subject, root, steps=SURROGATE_STEPS)), backbone_shards=[args.shard],
        max_candidates=args.candidates, score_batch_size=16, score_seed=seed,
        score_normalization=normalization, num_backbone_samples=60,
    )
    started = time.perf_counter()
    result = run_scoring(ScoreSettings.from_flags(**flags), show_progress=False)
    report = json.loads(result.report_path.read_text())
    records = [r for r in read_manifest(result.manifest_path) if r.has_score]
    return {
        "subject": subject.name, "normalization": normalization, "seed": seed, "candidates": len(records),
        "seconds": round(time.perf_counter() - started, 1), "reliability": report.get("reliability"),
        "scores": {r.key: [r.score, r.grad_norm, r.loss] for r in records},
    }


def measure(args) -> None:
    done = set()
    if args.output.is_file():
        done = {(r["subject"], r["normalization"], r["seed"]) for r in map(json.loads, args.output.read_text().splitlines())}
    pool_rows(args.shard, args.candidates, RESULTS / "pool.jsonl")
    for index in args.subjects:
        subject = WORLD_SUBJECTS[index]
        for normalization in args.normalizations:
            for seed in args.seeds:
                if (subject.name, normalization, seed) in done:
                    continue
                row = score_run(subject, normalization, seed, args)
                row |= {"machine": machine_info(), "commit": git_head(), "date": time.strftime("%Y-%m-%d")}
                with args.output.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                log(f"{subject.name} {normalization} seed {seed}: {row['candidates']} scored in {row['seconds']} s")


# ---------------------------------------------------------------------------------------------
# Tables


def runs(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("runs-*.jsonl")) for line in path.read_text().splitlines()]


VARIANTS = {  # name -> (run normalization, ranked by the cosine Z/‖∇ℓ‖ computed from that run)
    "Z (paper)": ("none", False),
    "cosine per candidate": ("none", True),
    "cosine per draw": ("timestep", False),
}


def records_of(run: dict, cosine: bool, allowed: set[str]) -> list[ManifestRecord]:
    """The run's scored candidates as manifest records (score, gradient norm), restricted to ``allowed``."""
    return [
        ManifestRecord(i, key, (z / norm if norm else 0.0) if cosine else z, grad_norm=norm)
        for i, (key, (z, norm, _)) in enumerate(sorted(run["scores"].items())) if key in allowed
    ]


def shares(keys: list[str], pool: dict[str, dict]) -> dict[str, float]:
    return {kind: float(np.mean([pool[k][kind] for k in keys])) if keys else float("nan") for kind in KINDS}


def kept_keys(records: list[ManifestRecord], n: int, norm_ratio: float | None, bottom: bool = False) -> list[str]:
    """The top (or bottom) ``n`` by the library's own rule: ALBAT top-N, whatever the sign, with its
    gradient-norm cap."""
    if bottom:
        records = [ManifestRecord(r.index, r.key, -r.score, grad_norm=r.grad_norm) for r in records]
    result = AlbatSelection(num_samples=n, force=True, max_norm_ratio=norm_ratio).select(records)
    chosen = set(result.selected_indices)
    return [r.key for r in records if r.index in chosen]


def variant_table(all_runs: list[dict], pool: dict[str, dict], thresholds: list[float | None],
                  norm_ratios: list[float | None]) -> tuple[str, list[dict]]:
    """Markdown table and its rows: noise shares in the top/bottom N per ranking, caption-image
    threshold and gradient-norm cap, with the test-retest Spearman of seeds 0 and 1."""
    out_rows, subjects = [], sorted({r["subject"] for r in all_runs})
    for threshold in thresholds:
        allowed = {k for k, row in pool.items() if threshold is None or row["clip_score"] >= threshold}
        for norm_ratio in norm_ratios:
            for name, (normalization, cosine) in VARIANTS.items():
                per_subject = []
                for subject in subjects:
                    seeded = {r["seed"]: r for r in all_runs
                              if r["subject"] == subject and r["normalization"] == normalization}
                    if 0 not in seeded:
                        continue
                    records = records_of(seeded[0], cosine, allowed)
                    entry = {f"top{n}": shares(kept_keys(records, n, norm_ratio), pool) for n in TOPS} | {
                        f"bottom{n}": shares(kept_keys(records, n, norm_ratio, bottom=True), pool) for n in TOPS}
                    entry["pool"] = shares([r.key for r in records], pool)
                    if 1 in seeded:
                        again = {r.key: r.score for r in records_of(seeded[1], cosine, allowed)}
                        common = [r for r in records if r.key in again]
                        entry["test_retest"] = spearman(np.array([r.score for r in common]),
                                                        np.array([again[r.key] for r in common]))
                    per_subject.append(entry)
                if per_subject:
                    out_rows.append({"variant": name, "min_clip_score": threshold, "max_grad_norm_ratio": norm_ratio,
                                     "subjects": len(per_subject), "per_subject": per_subject})
    pool_share = shares(list(pool), pool)
    lines = ["| ranking | min CLIP | norm cap | subjects | " + " | ".join(
        f"{kind} top {'/'.join(map(str, TOPS))} (pool {pool_share[kind]:.3f})" for kind in KINDS)
        + " | bottom 10 degraded+off-domain | test-retest | meets the targets |",
             "|---|---|---|---|" + "---|" * len(KINDS) + "---|---|---|"]
    for row in out_rows:
        per = row["per_subject"]
        mean = lambda f: float(np.nanmean([f(e) for e in per]))  # noqa: E731
        cells, meets = [], True
        for kind in KINDS:
            values = [mean(lambda e, n=n: e[f"top{n}"][kind]) for n in TOPS]
            limit = pool_share[kind] * (1.0 if kind == "degraded" else 0.5)
            if kind != "duplicate":
                meets &= all(v <= limit for v in values)
            cells.append("/".join(f"{v:.2f}" for v in values))
        bottom = mean(lambda e: e["bottom10"]["degraded"] + e["bottom10"]["offdomain"])
        retest = [e["test_retest"] for e in per if "test_retest" in e]
        lines.append(f"| {row['variant']} | {row['min_clip_score']} | {row['max_grad_norm_ratio']} | {row['subjects']} | "
                     + " | ".join(cells) + f" | {bottom:.2f} | "
                     + (f"{np.mean(retest):.2f} [{min(retest):.2f}–{max(retest):.2f}]" if retest else "–")
                     + f" | {'yes' if meets else 'no'} |")
        row["meets_targets"] = meets
    return "\n".join(lines), out_rows


# ---------------------------------------------------------------------------------------------
# Does junk hurt? Final LoRAs on what each selector kept from the noisy pool.


def arms(records: list[ManifestRecord], pool: dict[str, dict], keep: int, norm_ratio: float, seed: int) -> dict[str, set[str]]:
    """The candidates each arm trains on, ``keep`` of them (from one seed-0 scoring run)."""
    by_key = {r.key: r for r in records}
    z = [ManifestRecord(r.index, r.key, r.score, grad_norm=r.grad_norm) for r in records]
    cosine = [ManifestRecord(r.index, r.key, r.score / r.grad_norm, grad_norm=r.grad_norm) for r in records]
    rng = np.random.default_rng(1000 + seed)
    clean = sorted(k for k in by_key if not any(pool[k][kind] for kind in KINDS))
    mismatched = sorted(k for k in by_key if pool[k]["mismatched"])
    return {
        "albat_Z": set(kept_keys(z, keep, None)),
        "albat_cosine_capped": set(kept_keys(cosine, keep, norm_ratio)),
        "random": set(rng.choice(sorted(by_key), keep, replace=False).tolist()),
        "clean_random": set(rng.choice(clean, keep, replace=False).tolist()),
        "mismatched_random": set(rng.choice(mismatched, min(keep, len(mismatched)), replace=False).tolist()),
    }


def train_arms(args, pool: dict[str, dict]) -> None:
    """Train and score every arm's final LoRA for ``--train_subjects`` (rows in ``train.jsonl``)."""
    from benchmarks.bench_validity import train_on
    from dreambat_world.metrics import evaluate_world

    out_file = RESULTS / "train.jsonl"
    done = {(r["subject"], r["arm"]) for r in map(json.loads, out_file.read_text().splitlines())} \
        if out_file.is_file() else set()
    for index in args.train_subjects:
        subject = WORLD_SUBJECTS[index]
        manifest = args.work_dir / subject.name / "none" / "seed0" / "selection.jsonl"
        records = [r for r in read_manifest(manifest) if r.has_score]
        chosen = arms(records, pool, args.keep, args.train_norm_ratio, seed=0)
        loras = {}
        for arm, keys in chosen.items():
            if (subject.name, arm) in done:
                continue
            loras[arm] = train_on(subject, keys, records, args.work_dir / subject.name / "train" / arm, 0, args.steps)
        if not loras:
            continue
        scores = evaluate_world(ASSETS_DIR / BACKBONE_DIR, loras, [subject.name], args.work_dir / subject.name / "eval",
                                num_images=2, seed=0, progress=False)
        with out_file.open("a") as handle:
            for score in scores:
                kept = chosen[score.method]
                row = dataclasses.asdict(score) | {"arm": score.method, "kept": len(kept), "steps": args.steps,
                                                   "kept_shares": shares(sorted(kept), pool),
                                                   "commit": git_head(), "date": time.strftime("%Y-%m-%d")}
                handle.write(json.dumps(row) + "\n")
        log(f"{subject.name}: trained and scored {sorted(loras)}")


def train_table(path: Path) -> str:
    """Per arm: mean over subjects of every world metric, and the arm minus clean_random, paired ± SE."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    metrics = ("heldout_loss", "dino", "clip_t", "subject_fidelity", "prompt_fidelity")
    by = {(r["subject"], r["arm"]): r for r in rows}
    subjects = sorted({r["subject"] for r in rows})
    lines = ["| arm | subjects | mismatched / partly wrong / degraded kept | " + " | ".join(metrics)
             + " | minus clean_random: " + " / ".join(metrics) + " |", "|---|---|---|" + "---|" * (len(metrics) + 1)]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        group = [by[(s, arm)] for s in subjects if (s, arm) in by]
        kept = "/".join(f"{np.mean([g['kept_shares'][k] for g in group]):.2f}"
                        for k in ("mismatched", "partly_wrong", "degraded"))
        cells = [f"{np.mean([g[m] for g in group]):.4f}" for m in metrics]
        diffs = []
        for m in metrics:
            d = np.array([by[(s, arm)][m] - by[(s, "clean_random")][m] for s in subjects
                          if (s, arm) in by and (s, "clean_random") in by])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            star = "*" if len(d) > 1 and abs(d.mean()) > 2 * se else ""
            diffs.append(f"{d.mean():+.4f} ± {se:.4f}{star}")
        lines.append(f"| {arm} | {len(group)} | {kept} | " + " | ".join(cells) + " | " + " / ".join(diffs) + " |")
    return "\n".join(lines)


def plot(all_runs: list[dict], pool: dict[str, dict], path: Path) -> None:
    """Score against gradient norm and loss for one subject (seed 0), by noise kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = next(r for r in all_runs if r["normalization"] == "none" and r["seed"] == 0)
    keys = list(run["scores"])
    z, norm, loss = (np.array([run["scores"][k][i] for k in keys]) for i in range(3))
    kind = ["mismatched" if pool[k]["mismatched"] else "partly wrong" if pool[k]["partly_wrong"] else
            "off-domain" if pool[k]["offdomain"] else "degraded" if pool[k]["degraded"] else "clean" for k in keys]
    colours = {"clean": "#999999", "mismatched": "#d62728", "partly wrong": "#ff7f0e", "degraded": "#1f77b4",
               "off-domain": "#9467bd"}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for label, colour in colours.items():
        mask = np.array([k == label for k in kind])
        axes[0].scatter(norm[mask], z[mask], s=10, c=colour, label=label, alpha=0.7)
        axes[1].scatter(loss[mask], z[mask], s=10, c=colour, alpha=0.7)
        axes[2].scatter(norm[mask], (z / norm)[mask], s=10, c=colour, alpha=0.7)
    axes[0].set(xlabel="‖∇ℓ(x)‖", ylabel="Z(x)", title=f"Z against gradient norm ({run['subject']})")
    axes[1].set(xlabel="candidate loss", ylabel="Z(x)", title="Z against loss")
    axes[2].set(xlabel="‖∇ℓ(x)‖", ylabel="Z / ‖∇ℓ‖", title="the cosine against gradient norm")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=list(range(6)), help="indices into WORLD_SUBJECTS")
    parser.add_argument("--normalizations", nargs="+", default=["none", "timestep"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--shard", default=str(REPO / DEFAULT_NOISY_POOL_DIR / "shard-00000.tar"))
    parser.add_argument("--output", type=Path, default=RESULTS / "runs-a.jsonl")
    parser.add_argument("--work_dir", type=Path, default=REPO / "outputs" / "bench_junk")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.3, 0.5, 0.7])
    parser.add_argument("--norm_ratios", type=float, nargs="*", default=[3.0, 2.0, 1.5, 1.25])
    parser.add_argument("--train", action="store_true", help="train and score the final LoRAs of each arm")
    parser.add_argument("--train_subjects", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_norm_ratio", type=float, default=1.5)
    parser.add_argument("--keep", type=int, default=60)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.train:
        train_arms(args, {r["key"]: r for r in pool_rows(args.shard, args.candidates, RESULTS / "pool.jsonl")})
        return
    if not (args.table or args.plot):
        args.output.parent.mkdir(parents=True, exist_ok=True)
        measure(args)
        return
    pool = {r["key"]: r for r in pool_rows(args.shard, args.candidates, RESULTS / "pool.jsonl")}
    all_runs = runs(RESULTS)
    if args.table:
        text, rows = variant_table(all_runs, pool, [None, *args.thresholds], [None, *args.norm_ratios])
        print(text)
        (RESULTS / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(all_runs, pool, RESULTS / "score-vs-norm.png")
    if args.table and (RESULTS / "train.jsonl").is_file():
        print()
        print(train_table(RESULTS / "train.jsonl"))


if __name__ == "__main__":
    main()
