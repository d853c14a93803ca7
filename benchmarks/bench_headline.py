"""The headline: does a BAT selection beat what a user would otherwise do, on the same subjects,
seeds and budget? Built from the rows of :mod:`benchmarks.bench_curves` (one or more tags).

For every (pool, photo count) the rows hold, each arm is set against **DreamBooth-LoRA with prior
preservation** (``prior``) and against **random** backbone images:

- at equal steps, and at equal subject exposure (:func:`~benchmarks.bench_curves.exposure_step`);
- at matched likeness: prompt following (CLIP-T, prompt fidelity) and PRES read off each
  (subject, seed) curve at DINO and subject-fidelity levels every arm reaches.

Every difference is paired over (subject, seed) and clustered by subject (the seeds of a subject
share its photos); * / ``beyond_2se`` marks those beyond 2 SE. Each (arm, reference) gets a
verdict from its matched-likeness comparisons (the fronts, which need no exposure convention):
``wins`` where at least one is better beyond 2 SE and none worse, ``loses`` the reverse, ``mixed``
where both occur, ``ties`` where none is beyond 2 SE.

    python -m benchmarks.bench_headline                       # the committed rows -> headline.json + plots
    python -m benchmarks.bench_headline --rows outputs/bench_curves/TAG/results.jsonl --output_dir /tmp/h

Outputs (``--output_dir``, default ``benchmarks/results``): ``headline.json`` (arms, every
difference, verdicts, what each selector kept, the rows' sources and the commit that summarised
them), ``headline.md`` (the verdicts and the matched-likeness tables) and one
``headline-<pool>-<photos>photos.png`` front per (pool, photo count).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks._measure import REPO, git_head
from benchmarks.bench_curves import (
    EQUAL_STEP_METRICS, LIKENESS, METHODS, ORDER, PRIOR_DRIFT, PROMPT_FOLLOWING, composition_table,
    equal_step_differences, exposure_differences, has_metric, matched_differences, matched_table, read_rows,
    tradeoff_plot, with_pool_free_rows,
)
from dreambat_world.metrics import WORLD_METRICS

REFERENCES = ("prior", "random")
"""What every arm is set against: the baseline a user would pick instead, and the selection-free control."""
VALIDITY = ("albat", "albat_bottom")
"""The validity check: ALBAT's top N against the N it ranks lowest, from the same scores (and the same
skipped candidates). If the ranking carries information, the top beats the bottom."""
LOWER_IS_BETTER = frozenset({"heldout_loss", PRIOR_DRIFT, "class_subject_fidelity"})
DEFAULT_ROWS = (REPO / "benchmarks/results/curves/ti-headroom.jsonl",)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=Path, nargs="+", default=list(DEFAULT_ROWS),
                   help="bench_curves results.jsonl files (rows of one tag's fixed settings each)")
    p.add_argument("--output_dir", type=Path, default=REPO / "benchmarks/results")
    p.add_argument("--gamma", type=float, default=0.5, help="the γ the mixtures were trained at")
    return p.parse_args(argv)


def better(metric: str, mean: float) -> bool:
    """Whether a difference of ``mean`` in ``metric`` is an improvement."""
    return mean < 0 if metric in LOWER_IS_BETTER else mean > 0


def matched_comparisons(rows: list[dict], reference: str) -> list[dict]:
    """Prompt following and (where the rows carry it) PRES at matched DINO and subject fidelity."""
    found = []
    for x_metric in LIKENESS:
        found += matched_differences(rows, reference, x_metric, PROMPT_FOLLOWING)
        if has_metric(rows, PRIOR_DRIFT):
            found += matched_differences(rows, reference, x_metric, (PRIOR_DRIFT,))
    return found


def verdicts(matched: list[dict]) -> list[dict]:
    """Per (pool, photos, method, reference): how many matched comparisons are better / worse beyond
    2 SE and in all, and the verdict they give (see the module docstring)."""
    groups: dict[tuple, list[dict]] = {}
    for d in matched:
        groups.setdefault((d["pool"], d["photos"], d["method"], d["reference"]), []).append(d)
    found = []
    for (pool, photos, method, reference), ds in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], ORDER.index(kv[0][2]), kv[0][3])):
        wins = sum(d["beyond_2se"] and better(d["metric"], d["mean"]) for d in ds)
        losses = sum(d["beyond_2se"] and not better(d["metric"], d["mean"]) for d in ds)
        verdict = ("mixed" if wins and losses else "wins" if wins else "loses" if losses else "ties")
        by_metric = {m: dict(better=sum(d["beyond_2se"] and better(m, d["mean"]) for d in ds if d["metric"] == m),
                             worse=sum(d["beyond_2se"] and not better(m, d["mean"]) for d in ds if d["metric"] == m),
                             comparisons=sum(d["metric"] == m for d in ds))
                     for m in dict.fromkeys(d["metric"] for d in ds)}
        found.append(dict(pool=pool, photos=photos, method=method, reference=reference, better=wins,
                          worse=losses, comparisons=len(ds), verdict=verdict, by_metric=by_metric))
    return found


def arm_summaries(rows: list[dict]) -> list[dict]:
    """Per (pool, photos, method, step): subjects, seeds, runs and the mean of every world metric."""
    found = []
    for pool, photos, method, step in sorted({(r["pool"], r["photos"], r["method"], r["step"]) for r in rows},
                                             key=lambda k: (k[0], k[1], ORDER.index(k[2]), k[3])):
        own = [r for r in rows if (r["pool"], r["photos"], r["method"], r["step"]) == (pool, photos, method, step)]
        means = {}
        for metric in WORLD_METRICS:
            values = [r[metric] for r in own if r.get(metric) is not None]
            means[metric] = float(np.mean(values)) if values else None
        seconds = [r["train_seconds"] for r in own if r.get("train_seconds")]
        found.append(dict(pool=pool, photos=photos, method=method, step=step, runs=len(own),
                          subjects=sorted({r["subject"] for r in own}), seeds=sorted({r["seed"] for r in own}),
                          means=means, train_seconds=float(np.mean(seconds)) if seconds else None))
    return found


def selections(rows: list[dict]) -> list[dict]:
    """What each selector kept at its last step's runs: the shares of the kept set and of the pool."""
    found = []
    for pool in sorted({r["pool"] for r in rows}):
        for method in METHODS:
            own = [r for r in rows if r["pool"] == pool and r["method"] == method and r.get("selection")]
            if not own:
                continue
            last = max(r["step"] for r in own)
            sel = [r["selection"] for r in own if r["step"] == last]
            keys = sorted(k for k in sel[0] if isinstance(sel[0][k], (int, float)))
            found.append(dict(pool=pool, method=method, runs=len(sel),
                              shares={k: float(np.mean([s[k] for s in sel if k in s])) for k in keys}))
    return found


def headline(rows: list[dict], gamma: float) -> dict:
    """Everything ``headline.json`` holds, from ``rows`` (pool-free rows already shared out)."""
    equal_steps, exposure, matched = [], [], []
    metrics = EQUAL_STEP_METRICS + ("pres",) if has_metric(rows, PRIOR_DRIFT) else EQUAL_STEP_METRICS
    for reference in REFERENCES:
        if not any(r["method"] == reference for r in rows):
            continue
        equal_steps += equal_step_differences(rows, reference, metrics)
        exposure += exposure_differences(rows, gamma, reference=reference)
        matched += matched_comparisons(rows, reference)
    validity = None
    arm, bottom = VALIDITY
    if any(r["method"] == bottom for r in rows):
        own = [r for r in rows if r["method"] in (arm, bottom, "base")]
        matched_own = matched_comparisons(own, bottom)
        validity = dict(arm=arm, reference=bottom, equal_steps=equal_step_differences(own, bottom, metrics),
                        matched_likeness=matched_own,
                        verdicts=[v for v in verdicts(matched_own) if v["method"] == arm])
    return dict(
        cases=[dict(pool=p, photos=ph, subjects=len({r["subject"] for r in rows if (r["pool"], r["photos"]) == (p, ph)}),
                    seeds=sorted({r["seed"] for r in rows if (r["pool"], r["photos"]) == (p, ph)}))
               for p, ph in sorted({(r["pool"], r["photos"]) for r in rows})],
        references=list(REFERENCES), gamma=gamma, arms=arm_summaries(rows), equal_steps=equal_steps,
        equal_exposure=exposure, matched_likeness=matched, verdicts=verdicts(matched), selections=selections(rows),
        validity=validity,
    )


def verdict_table(found: list[dict]) -> str:
    """The verdicts, with better* / worse* counts in all and per measure."""
    measures = list(dict.fromkeys(m for v in found for m in v["by_metric"]))
    lines = ["| pool | photos | arm | against | verdict | better* / worse* of N | "
             + " | ".join(measures) + " |", "|---|---|---|---|---|---|" + "---|" * len(measures)]
    for v in found:
        cells = [f"{c['better']} / {c['worse']} of {c['comparisons']}" if (c := v["by_metric"].get(m)) else "–"
                 for m in measures]
        lines.append(f"| {v['pool']} | {v['photos']} | {v['method']} | {v['reference']} | **{v['verdict']}** | "
                     f"{v['better']} / {v['worse']} of {v['comparisons']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _steps_table(found: list[dict]) -> str:
    """Equal-step differences as a table: one row per (pool, photos, step, method)."""
    metrics = list(dict.fromkeys(d["metric"] for d in found))
    groups: dict[tuple, dict] = {}
    for d in found:
        groups.setdefault((d["pool"], d["photos"], d["step"], d["method"]), {})[d["metric"]] = d
    lines = ["| pool | photos | step | arm | pairs | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
             "|---|---|---|---|---|" + "---|" * len(metrics)]
    for (pool, photos, step, method), cells in sorted(groups.items()):
        pairs = max(c["pairs"] for c in cells.values())
        values = [f"{c['mean']:+.4f} ± {c['se']:.4f}{'*' if c['beyond_2se'] else ''}" if (c := cells.get(m)) else "–"
                  for m in metrics]
        lines.append(f"| {pool} | {photos} | {step} | {method} | {pairs} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_headline(row_files: list[Path], output_dir: Path, gamma: float) -> dict:
    rows = with_pool_free_rows([r for path in row_files for r in read_rows(path)])
    result = headline(rows, gamma)
    result["rows"] = [str(p.resolve().relative_to(REPO)) if p.resolve().is_relative_to(REPO) else str(p)
                      for p in row_files]
    result["summarised_at_commit"] = git_head()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "headline.json").write_text(json.dumps(result, indent=1) + "\n")
    parts = ["## Verdicts at matched likeness (better* / worse*: comparisons beyond 2 SE, ± SE over subjects)",
             "", verdict_table(result["verdicts"])]
    if result["validity"]:
        arm, bottom = VALIDITY
        parts += [f"## Validity: {arm} (its top N) against {bottom} (the N it ranks lowest), same scores", "",
                  verdict_table(result["validity"]["verdicts"]), _steps_table(result["validity"]["equal_steps"])]
    for reference in REFERENCES:
        for x_metric in LIKENESS:
            for y_metrics in (PROMPT_FOLLOWING, (PRIOR_DRIFT,)):
                if y_metrics == (PRIOR_DRIFT,) and not has_metric(rows, PRIOR_DRIFT):
                    continue
                table = matched_table(rows, reference, x_metric, y_metrics)
                if table:
                    parts += [f"## {', '.join(y_metrics)} at matched {x_metric}, minus {reference}", "", table]
    table = composition_table(rows)
    if table:
        parts += ["## What each selector kept (share of kept images / share of the pool)", "", table]
    (output_dir / "headline.md").write_text("\n".join(parts))
    for case in result["cases"]:
        tradeoff_plot(rows, output_dir / f"headline-{case['pool']}-{case['photos']}photos.png",
                      case["pool"], case["photos"])
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    result = write_headline(args.rows, args.output_dir, args.gamma)
    print(verdict_table(result["verdicts"]))
    print(f"wrote {args.output_dir / 'headline.json'}")


if __name__ == "__main__":
    main()
