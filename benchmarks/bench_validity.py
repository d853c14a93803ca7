"""Do ALBAT's scores predict what retraining does? Top-N vs bottom-N vs random, and a
linear-datamodeling score (LDS), on the mini-world.

Scores: for each subject, the demo's surrogate recipe (as ``bench_reliability``) and one
``run_scoring`` per estimator variant over the first ``--candidates`` images of the bundled
shard (:data:`VARIANTS`: the old defaults, the new ones, and the new ones with ``datainf`` and
``identity`` curvature).

1. ``--part arms``: per (subject, training seed), final LoRAs on the subject plus the N
   highest-scoring candidates of each variant, the N lowest, and N random ones (γ = 0.5, the
   demo's recipe); each LoRA's held-out subject denoising loss (the world's 8 held-out photos).
   Paired differences over (subject, seed): top − bottom and top − random; * beyond 2 SE.
2. ``--part lds``: for one or two subjects, ``--subsets`` random halves of the candidates, a final
   LoRA on each (the same training seed), its held-out loss; per variant the Spearman correlation
   between a subset's summed score and its *negative* loss (higher scores should mean lower loss).

Every final LoRA goes through ``run_bat`` with a ``--selection_manifest`` that keeps exactly the
wanted candidates (scores rewritten to +1 / −1, top-|set| kept), so the product's own path trains
it. Resumable: finished LoRAs and rows are reused.

    python -m benchmarks.bench_validity --part arms --subjects 6 --seeds 0 1
    python -m benchmarks.bench_validity --part lds --subject_names dotted_purple_star --subsets 32
    python -m benchmarks.bench_validity --table
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import REPO, git_head, log, machine_info
from benchmarks.bench_quality import diff_text, paired
from benchmarks.bench_reliability import SETTINGS, surrogate
from dreambat.albat import read_manifest, write_manifest
from dreambat.albat import spearman
from dreambat.bat.config import BatSettings
from dreambat.bat.pipeline import run_bat
from dreambat.constants import LORA_WEIGHTS_NAME
from dreambat.scoring.config import ScoreSettings
from dreambat.scoring.run import run_scoring
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, BUNDLED_SHARD, SUBJECTS_DIR
from dreambat_world.metrics import HeldoutLoss
from dreambat_world.subjects import WORLD_SUBJECTS

VARIANTS = ("old", "new", "new_datainf", "new_identity")
BACKBONE = ASSETS_DIR / BACKBONE_DIR
SHARD = str(ASSETS_DIR / BUNDLED_SHARD)


def scores(subject, variant: str, root: Path, candidates: int) -> list:
    """The scored manifest of ``variant`` for ``subject`` (score seed 0), computed once."""
    out = root / subject.name / "scores" / variant
    flags = dict(
        pretrained_model_name_or_path=str(BACKBONE),
        instance_data_dir=str(ASSETS_DIR / SUBJECTS_DIR / subject.name / "train"),
        instance_prompt=f"a photo of sks {subject.class_word}", output_dir=str(out), resolution=32,
        surrogate_lora=str(surrogate(subject, root)), backbone_shards=[SHARD], max_candidates=candidates,
        score_batch_size=16, **SETTINGS[variant],
    )
    return [r for r in read_manifest(run_scoring(ScoreSettings.from_flags(**flags), show_progress=False)
                                      .manifest_path) if r.has_score]


def train_on(subject, keys: set[str], records: list, out: Path, seed: int, steps: int) -> Path:
    """A final LoRA on the subject plus exactly the candidates ``keys`` (γ = 0.5); reused if present."""
    if (out / LORA_WEIGHTS_NAME).is_file():
        return out
    manifest = out.parent / f"{out.name}.selection.jsonl"
    kept = [replace(r, score=1.0 if r.key in keys else -1.0, selected=None, split_scores=None, grad_norm=None, loss=None)
            for r in records]  # the arm is the selection: no norm cap or other rule may thin it
    write_manifest(kept, manifest, fingerprint={"source": "bench_validity"})
    run_bat(BatSettings.from_flags(
        pretrained_model_name_or_path=str(BACKBONE),
        instance_data_dir=str(ASSETS_DIR / SUBJECTS_DIR / subject.name / "train"),
        instance_prompt=f"a photo of sks {subject.class_word}", output_dir=str(out), seed=seed, resolution=32,
        random_flip=True, train_batch_size=4, max_train_steps=steps, learning_rate=1e-3, rank=8,
        checkpointing_steps=10**9, report_to="none", selection="albat", selection_manifest=str(manifest),
        num_backbone_samples=len(keys), augmentation_ratio=0.5,
    ))
    return out


def part_arms(args, loss: HeldoutLoss, out_file: Path) -> None:
    done = _done(out_file, ("subject", "seed", "arm"))
    for subject in _subjects(args):
        ranked = {v: sorted(scores(subject, v, args.output_dir, args.candidates), key=lambda r: -r.score)
                  for v in VARIANTS}
        records = ranked["new"]
        arms = {f"{v}_top": {r.key for r in ranked[v][: args.keep]} for v in VARIANTS}
        arms |= {f"{v}_bottom": {r.key for r in ranked[v][-args.keep:]} for v in VARIANTS}
        for seed in args.seeds:
            rng = np.random.default_rng(1000 + seed)
            arms["random"] = {records[i].key for i in rng.choice(len(records), args.keep, replace=False)}
            for arm, keys in arms.items():
                if (subject.name, seed, arm) in done:
                    continue
                lora = train_on(subject, keys, records, args.output_dir / subject.name / f"seed{seed}" / arm,
                                seed, args.steps)
                prompt = f"a photo of sks {subject.class_word}"
                _append(out_file, {"subject": subject.name, "seed": seed, "arm": arm,
                                   "heldout_loss": loss(subject, prompt, lora)})
                log(f"{subject.name} seed {seed} {arm}")


def part_lds(args, loss: HeldoutLoss, out_file: Path) -> None:
    done = _done(out_file, ("subject", "subset"))
    for subject in _subjects(args):
        records = scores(subject, "new", args.output_dir, args.candidates)
        for variant in VARIANTS:  # every variant's scores, for the LDS of each (the subsets use "new"'s keys)
            scores(subject, variant, args.output_dir, args.candidates)
        rng = np.random.default_rng(7)
        for subset in range(args.subsets):
            keys = {records[i].key for i in rng.choice(len(records), len(records) // 2, replace=False)}
            if (subject.name, subset) in done:
                continue
            lora = train_on(subject, keys, records, args.output_dir / subject.name / "lds" / f"subset{subset:03d}",
                            args.lds_seed, args.steps)
            _append(out_file, {"subject": subject.name, "subset": subset, "keys": sorted(keys),
                               "heldout_loss": loss(subject, f"a photo of sks {subject.class_word}", lora)})
            log(f"{subject.name} LDS subset {subset}")


def tables(arms_rows: list[dict], lds_rows: list[dict], root: Path, candidates: int) -> str:
    lines = []
    if arms_rows:
        base = {}
        lines += ["| scores | top − bottom (held-out loss) | top − random | pairs |", "|---|---|---|---|"]
        for variant in VARIANTS:
            top = [r for r in arms_rows if r["arm"] == f"{variant}_top"]
            bottom = {(r["subject"], r["seed"]): r for r in arms_rows if r["arm"] == f"{variant}_bottom"}
            random = {(r["subject"], r["seed"]): r for r in arms_rows if r["arm"] == "random"}
            vs_bottom, vs_random = paired(top, bottom, "heldout_loss"), paired(top, random, "heldout_loss")
            base[variant] = vs_bottom
            if vs_bottom:
                lines.append(f"| {variant} | {diff_text(vs_bottom, 'heldout_loss')} | "
                             f"{diff_text(vs_random, 'heldout_loss') if vs_random else '–'} | {vs_bottom[2]} |")
    for subject in sorted({r["subject"] for r in lds_rows}):
        rows = [r for r in lds_rows if r["subject"] == subject]
        lines += ["", f"LDS, {subject}, {len(rows)} half-subsets: Spearman(sum of subset scores, −held-out loss)", "",
                  "| scores | LDS | 95 % bootstrap interval (over subsets) |", "|---|---|---|"]
        losses = np.array([r["heldout_loss"] for r in rows])
        for variant in VARIANTS:
            manifest = root / subject / "scores" / variant / "selection.jsonl"
            if not manifest.is_file():
                continue
            z = {r.key: r.score for r in read_manifest(manifest) if r.has_score}
            sums = np.array([sum(z[k] for k in r["keys"]) for r in rows])
            low, high = _bootstrap(sums, -losses)
            lines.append(f"| {variant} | {spearman(sums, -losses):+.3f} | [{low:+.2f}, {high:+.2f}] |")
    return "\n".join(lines)


def _bootstrap(x: np.ndarray, y: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """2.5 % and 97.5 % quantiles of Spearman(x, y) over resamples of the (x, y) pairs."""
    rng = np.random.default_rng(seed)
    values = [spearman(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(draws))]
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def _subjects(args):
    return ([s for s in WORLD_SUBJECTS if s.name in args.subject_names] if args.subject_names
            else WORLD_SUBJECTS[: args.subjects])


def _done(path: Path, fields: tuple[str, ...]) -> set:
    if not path.is_file():
        return set()
    return {tuple(json.loads(line)[f] for f in fields) for line in path.read_text().splitlines()}


def _append(path: Path, row: dict) -> None:
    row |= {"commit": git_head(), "date": time.strftime("%Y-%m-%d")}
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["arms", "lds"], default="arms")
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--subject_names", nargs="*", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--keep", type=int, default=60, help="N of top-N / bottom-N / random-N")
    p.add_argument("--steps", type=int, default=200, help="final training steps")
    p.add_argument("--subsets", type=int, default=32)
    p.add_argument("--lds_seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output_dir", type=Path, default=REPO / "outputs" / "bench_reliability")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    arms_file, lds_file = args.results / "validity-arms.jsonl", args.results / "validity-lds.jsonl"
    if args.table:
        read = lambda f: [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []  # noqa: E731
        print(tables(read(arms_file), read(lds_file), args.output_dir, args.candidates))
        return
    torch.set_num_threads(args.threads)
    log(f"machine: {machine_info()['cpu_model']}")
    loss = HeldoutLoss(BACKBONE)
    (part_arms if args.part == "arms" else part_lds)(args, loss, arms_file if args.part == "arms" else lds_file)


if __name__ == "__main__":
    main()
