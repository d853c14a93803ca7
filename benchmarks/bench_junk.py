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
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import REPO, git_head, log, machine_info
from benchmarks.bench_reliability import surrogate
from dreambat.albat import read_manifest, spearman
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


def ranking(run: dict, variant: str) -> dict[str, float]:
    """The score each candidate is ranked by under ``variant``: ``Z``, ``cosine`` (Z/‖∇ℓ‖) or the run's own."""
    if variant == "cosine":
        return {k: z / n if n else 0.0 for k, (z, n, _) in run["scores"].items()}
    return {k: z for k, (z, _, _) in run["scores"].items()}


VARIANTS = {  # name -> (run normalization, ranking)
    "Z (paper)": ("none", "Z"),
    "cosine per candidate": ("none", "cosine"),
    "cosine per draw": ("timestep", "Z"),
}


def shares(keys: list[str], pool: dict[str, dict]) -> dict[str, float]:
    return {kind: float(np.mean([pool[k][kind] for k in keys])) if keys else float("nan") for kind in KINDS}


def variant_table(all_runs: list[dict], pool: dict[str, dict], thresholds: list[float | None]) -> tuple[str, list[dict]]:
    """Markdown table and its rows: noise shares in the top/bottom N per variant and threshold."""
    out_rows, subjects = [], sorted({r["subject"] for r in all_runs})
    for threshold in thresholds:
        allowed = {k for k, row in pool.items() if threshold is None or row["clip_score"] >= threshold}
        for name, (normalization, how) in VARIANTS.items():
            per_subject = []
            for subject in subjects:
                seeded = {r["seed"]: r for r in all_runs if r["subject"] == subject and r["normalization"] == normalization}
                if 0 not in seeded:
                    continue
                scores = {k: v for k, v in ranking(seeded[0], how).items() if k in allowed}
                order = sorted(scores, key=lambda k: -scores[k])
                entry = {f"top{n}": shares(order[:n], pool) for n in TOPS} | {
                    f"bottom{n}": shares(order[-n:], pool) for n in TOPS}
                entry["pool"] = shares(list(scores), pool)
                if 1 in seeded:
                    other = ranking(seeded[1], how)
                    common = sorted(set(scores) & set(other))
                    entry["test_retest"] = spearman(np.array([scores[k] for k in common]),
                                                    np.array([other[k] for k in common]))
                per_subject.append(entry)
            if per_subject:
                out_rows.append({"variant": name, "min_clip_score": threshold, "subjects": len(per_subject),
                                 "per_subject": per_subject})
    lines = ["| ranking | min CLIP | subjects | kept of pool | " + " | ".join(
        f"{kind} top {'/'.join(map(str, TOPS))} (pool)" for kind in KINDS) + " | bottom 10 degraded+off-domain | test-retest |",
             "|---|---|---|---|" + "---|" * len(KINDS) + "---|---|"]
    for row in out_rows:
        per = row["per_subject"]
        mean = lambda f: float(np.nanmean([f(e) for e in per]))  # noqa: E731
        cells = []
        for kind in KINDS:
            tops = "/".join(f"{mean(lambda e, n=n: e[f'top{n}'][kind]):.2f}" for n in TOPS)
            cells.append(f"{tops} ({mean(lambda e: e['pool'][kind]):.2f})")
        bottom = mean(lambda e: e["bottom10"]["degraded"] + e["bottom10"]["offdomain"])
        retest = [e["test_retest"] for e in per if "test_retest" in e]
        kept = len([k for k, r in pool.items() if row["min_clip_score"] is None or r["clip_score"] >= row["min_clip_score"]])
        lines.append(f"| {row['variant']} | {row['min_clip_score']} | {row['subjects']} | {kept}/{len(pool)} | "
                     + " | ".join(cells) + f" | {bottom:.2f} | "
                     + (f"{np.mean(retest):.2f} [{min(retest):.2f}–{max(retest):.2f}]" if retest else "–") + " |")
    return "\n".join(lines), out_rows


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
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.2, 0.25, 0.3])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not (args.table or args.plot):
        args.output.parent.mkdir(parents=True, exist_ok=True)
        measure(args)
        return
    pool = {r["key"]: r for r in pool_rows(args.shard, args.candidates, RESULTS / "pool.jsonl")}
    all_runs = runs(RESULTS)
    if args.table:
        text, rows = variant_table(all_runs, pool, [None, *args.thresholds])
        print(text)
        (RESULTS / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(all_runs, pool, RESULTS / "score-vs-norm.png")


if __name__ == "__main__":
    main()
