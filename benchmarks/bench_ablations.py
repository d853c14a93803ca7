#!/usr/bin/env python
"""The paper's ablations on the mini-world: γ, surrogate steps, pool size, number of subject photos.

Each sweep value is one ``bench_quality.py`` tag under the same ``--output_dir``, run with only
the methods that value changes; the value the main comparison already used is read from the
reference tag instead of being trained again (same settings, same seeds: the same runs). Then one
table per sweep: for each value and method, the mean of every world metric and the paired
difference to DreamBooth-LoRA (over subject x seed, ± its standard error), plus ALBAT minus random.

    python benchmarks/bench_quality.py --tag all --max_candidates 1000 --keep 100 --num_prompts 13
    python benchmarks/bench_ablations.py --reference_tag all --subjects 6 --seeds 0
    python benchmarks/bench_ablations.py --reference_tag all --report_only    # tables only

Sweeps (reference value in brackets):

* ``gamma``: backbone share γ of the final training stream, 0.75 / 0.9 / 0.95 / 0.99 [0.5];
  methods ``random`` and ``exact`` (DreamBooth does not depend on γ).
* ``surrogate``: surrogate steps 50 / 200 / 400 [100]; ``exact`` only.
* ``pool``: the scored pool is the first 10 / 25 / 50 % of the reference pool [100 %], the number
  kept staying at ``--keep`` (ALBAT keeps only Z > 0, so a small pool can give fewer); ``exact``.
* ``photos``: the subject's first 1 / 2 / 3 training photos [all 5]; ``dreambooth``, ``random``
  and ``exact`` (all three depend on the photos).
* ``steps``: final-training steps 400 / 800 [200]; ``dreambooth`` and ``exact``. At γ = 0.5 BAT
  sees half as many subject photos per step, so 400 steps give it DreamBooth's subject exposure;
  longer runs also show whether DreamBooth overfits where BAT does not.
* ``timesteps``: K = 8 timesteps per score [2]; ``exact`` and ``bottom`` (the lowest scores): are
  less noisy scores a better ranking?

A last table checks the scores themselves: Spearman correlation and top-``--keep`` overlap of
each run's ``exact`` scores with the reference run's, per (subject, seed), so that one sees how
much of a ranking survives a longer surrogate, more timesteps, or another curvature.

Runs are resumable (finished LoRAs and rows are reused), and several instances with disjoint
``--subjects`` can share one output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


from benchmarks import bench_quality  # noqa: E402
from dreambat.albat import read_manifest  # noqa: E402


@dataclass(frozen=True)
class Sweep:
    name: str
    flag: str
    label: str
    reference: float
    values: tuple[float, ...]
    methods: tuple[str, ...]


SWEEPS = {
    "gamma": Sweep("gamma", "--gamma", "γ", 0.5, (0.75, 0.9, 0.95, 0.99), ("random", "exact")),
    "surrogate": Sweep("surrogate", "--surrogate_steps", "surrogate steps", 100, (50, 200, 400), ("exact",)),
    "pool": Sweep("pool", "--max_candidates", "pool fraction", 1.0, (0.1, 0.25, 0.5), ("exact",)),
    "photos": Sweep("photos", "--num_subject_images", "subject photos", 5, (1, 2, 3),
                    ("dreambooth", "random", "exact")),
    "steps": Sweep("steps", "--steps", "final steps", 200, (400, 800), ("dreambooth", "exact")),
    "timesteps": Sweep("timesteps", "--num_score_timesteps", "score timesteps K", 2, (8,), ("exact", "bottom")),
}
METRICS = bench_quality.WORLD_METRICS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=Path, default=bench_quality.REPO / "outputs/bench_quality")
    p.add_argument("--reference_tag", default="main",
                   help="the bench_quality.py tag holding the main comparison (the reference values)")
    p.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    p.add_argument("--subjects", nargs="+", default=["6"], help="as bench_quality.py --subjects")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max_candidates", type=int, default=1000, help="the reference pool (as the reference tag)")
    p.add_argument("--keep", type=int, default=100)
    p.add_argument("--num_prompts", type=int, default=13)
    p.add_argument("--report_only", action="store_true", help="write the tables from the rows already there")
    p.add_argument("--out", type=Path, default=None, help="the Markdown report (default OUTPUT/ablations.md)")
    return p.parse_args(argv)


def tag_of(sweep: Sweep, value: float) -> str:
    return f"{sweep.name}-{value:g}"


def value_argv(sweep: Sweep, value: float, args: argparse.Namespace) -> list[str]:
    """The bench_quality.py arguments of one sweep value."""
    max_candidates = args.max_candidates
    setting = [sweep.flag, f"{value:g}"]
    if sweep.name == "pool":
        max_candidates = int(round(value * args.max_candidates))
        setting = []
    return ["--output_dir", str(args.output_dir), "--tag", tag_of(sweep, value), "--subjects", *args.subjects,
            "--seeds", *map(str, args.seeds), "--methods", *sweep.methods, "--max_candidates", str(max_candidates),
            "--keep", str(args.keep), "--num_prompts", str(args.num_prompts), *setting]


def read_rows(root: Path, tag: str) -> list[dict]:
    path = root / tag / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _cell(mean: float, diff: tuple[float, float, int] | None, metric: str) -> str:
    text = bench_quality.fmt(mean, metric)
    return text + f" ({bench_quality.diff_text(diff, metric)})" if diff is not None else text


def sweep_table(sweep: Sweep, args: argparse.Namespace) -> str:
    """One Markdown table: rows (value, method), the reference value first.

    The reference value's rows are those of the subjects the sweep ran on, so that every row of
    the table averages over the same subjects."""
    swept = {r["subject"] for value in sweep.values for r in read_rows(args.output_dir, tag_of(sweep, value))}
    reference = [r for r in read_rows(args.output_dir, args.reference_tag) if not swept or r["subject"] in swept]
    lines = [f"### {sweep.label}", "",
             "| " + sweep.label + " | method | n | " + " | ".join(METRICS) + " | held-out loss, ALBAT − random |",
             "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for value in (sweep.reference, *sweep.values):
        rows = reference if value == sweep.reference else read_rows(args.output_dir, tag_of(sweep, value))
        own = [r for r in rows if r["seed"] in args.seeds]
        subjects = {(r["subject"], r["seed"]) for r in own}
        by_method = {m: [r for r in own if r["method"] == m] for m in ("dreambooth", *sweep.methods)}
        if not by_method["dreambooth"]:  # the setting does not change DreamBooth: the reference's runs
            by_method["dreambooth"] = [r for r in reference if r["method"] == "dreambooth"
                                       and (r["subject"], r["seed"]) in subjects]
        base = {(r["subject"], r["seed"]): r for r in by_method["dreambooth"]}
        random_rows = {(r["subject"], r["seed"]): r for r in by_method.get("random", [])}
        for method, method_rows in by_method.items():
            if not method_rows:
                continue
            cells = []
            for metric in METRICS:
                values = [r.get(metric) for r in method_rows if r.get(metric) is not None]
                diff = None if method == "dreambooth" else bench_quality.paired(method_rows, base, metric)
                cells.append(_cell(float(np.mean(values)), diff, metric) if values else "–")
            vs_random = (bench_quality.paired(method_rows, random_rows, "heldout_loss")
                         if method == "exact" and random_rows else None)
            extra = bench_quality.diff_text(vs_random, "heldout_loss", star=False) if vs_random else ""
            lines.append(f"| {value:g} | {method} | {len(method_rows)} | " + " | ".join(cells) + f" | {extra} |")
    return "\n".join(lines) + "\n"


def _scores(manifest: Path) -> dict[str, float]:
    return {r.key: r.score for r in read_manifest(manifest) if r.score is not None}


def agreement(a: dict[str, float], b: dict[str, float], keep: int) -> tuple[float, float] | None:
    """Spearman ρ of two score maps on their common keys, and the overlap of their top-``keep`` sets."""
    from scipy.stats import spearmanr

    keys = sorted(a.keys() & b.keys())
    if len(keys) < 3:
        return None
    rho = float(spearmanr([a[k] for k in keys], [b[k] for k in keys]).statistic)
    top = min(keep, len(keys))
    best_a = set(sorted(keys, key=a.get, reverse=True)[:top])
    best_b = set(sorted(keys, key=b.get, reverse=True)[:top])
    return rho, len(best_a & best_b) / top


def score_table(args: argparse.Namespace) -> str:
    """How far each run's scores agree with the reference ``exact`` scores of the same (subject, seed)."""
    ref_root = args.output_dir / args.reference_tag / "runs"
    others = [("datainf (same surrogate)", args.reference_tag, "datainf"),
              ("identity (same surrogate)", args.reference_tag, "identity")]
    for name in ("surrogate", "timesteps"):
        if name in args.sweeps:
            sweep = SWEEPS[name]
            others += [(f"exact, {sweep.label} {v:g}", tag_of(sweep, v), "exact") for v in sweep.values]
    lines = ["### The scores themselves", "",
             f"Against the reference `exact` scores (1,000 candidates, surrogate {SWEEPS['surrogate'].reference:g} "
             f"steps, K = {SWEEPS['timesteps'].reference:g}); mean over (subject, seed) ± std.", "",
             "| scores | n | Spearman ρ | top-" + str(args.keep) + " overlap |", "|---|---|---|---|"]
    references = {}  # (subject, seed) -> scores, read once for every comparison
    for ref in sorted(ref_root.glob("*/seed*/exact/selection.jsonl")):
        seed = int(ref.parent.parent.name.removeprefix("seed"))
        if seed in args.seeds:
            references[(ref.parent.parent.parent.name, seed)] = _scores(ref)
    for label, tag, method in others:
        found = []
        for (subject, seed), ref_scores in references.items():
            other = args.output_dir / tag / "runs" / subject / f"seed{seed}" / method / "selection.jsonl"
            if other.is_file():
                pair = agreement(ref_scores, _scores(other), args.keep)
                if pair is not None:
                    found.append(pair)
        if found:
            rho, overlap = np.array(found).T
            lines.append(f"| {label} | {len(found)} | {rho.mean():.3f} ± {rho.std():.3f} | "
                         f"{overlap.mean():.3f} ± {overlap.std():.3f} |")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> str:
    head = (f"Reference tag `{args.reference_tag}`, seeds {args.seeds}. Cells: mean over (subject, seed); "
            "in brackets the paired difference to DreamBooth-LoRA ± its standard error over subjects "
            "(each subject's seeds averaged first), * where it "
            "exceeds 2 SE. Held-out loss: lower is better.\n")
    return "\n".join([head, *(sweep_table(SWEEPS[name], args) for name in args.sweeps), score_table(args)])


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.report_only:
        if not (args.output_dir / args.reference_tag / "results.jsonl").is_file():
            sys.exit(f"No reference rows in {args.output_dir / args.reference_tag}; run bench_quality.py "
                     f"--tag {args.reference_tag} first (the ablations reuse its runs as the reference values).")
        for name in args.sweeps:
            sweep = SWEEPS[name]
            for value in sweep.values:
                print(f"== {sweep.label} = {value:g}", flush=True)
                bench_quality.main(value_argv(sweep, value, args))
    text = report(args)
    out = args.out or args.output_dir / "ablations.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
