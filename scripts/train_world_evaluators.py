"""Train the world's evaluators and write them under assets/world/evaluators/.

    OMP_NUM_THREADS=1 python scripts/train_world_evaluators.py classifier --max_minutes 20
    OMP_NUM_THREADS=1 python scripts/train_world_evaluators.py clip --max_minutes 12
    OMP_NUM_THREADS=1 python scripts/train_world_evaluators.py dino --max_minutes 12
    OMP_NUM_THREADS=1 python scripts/train_world_evaluators.py measure   # all three, no training

Each run trains from a seed within a step and wall-clock budget, measures the result on held-out
data and writes ``training_report.json`` next to the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreambat_world.evaluator_training import TrainBudget  # noqa: E402
from dreambat_world.evaluators import EVALUATORS_DIR  # noqa: E402

DEFAULTS = {  # evaluator -> (steps, batch size, lr)
    "classifier": (5000, 64, 2e-3),
    "clip": (4000, 128, 1e-3),
    "dino": (4000, 128, 1e-3),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluator", choices=[*DEFAULTS, "measure"])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default assets/world/evaluators/NAME)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--max_minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 on a shared CPU)")
    parser.add_argument("--channels", type=int, nargs=3, default=[24, 48, 96],
                        help="classifier: widths of its three conv stages (the committed one: 24 48 96)")
    parser.add_argument("--reading_augmentation", action="store_true",
                        help="classifier: add JPEG and coarse-grid resampling to the blur and noise augmentation")
    parser.add_argument("--hidden", type=int, default=96, help="classifier: width of the shared layer")
    parser.add_argument("--vae_round_trip", type=Path, nargs="?", const="world", default=None,
                        help="classifier: send part of each batch through this backbone's VAE first "
                             "(no value: the world backbone), so it reads what the decoder draws")
    parser.add_argument("--round_trip_fraction", type=float, default=0.5, help="classifier: share of each batch")
    return parser.parse_args(argv)


def _budget(args: argparse.Namespace) -> TrainBudget:
    steps, batch_size, lr = DEFAULTS[args.evaluator]
    return TrainBudget(steps=args.steps or steps, batch_size=args.batch_size or batch_size, lr=args.lr or lr,
                       max_minutes=args.max_minutes, seed=args.seed)


def _classifier(args: argparse.Namespace, out: Path) -> dict:
    from dreambat_world.classifiers import ClassifierConfig
    from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR
    from dreambat_world.evaluator_training import (
        VaeRoundTrip,
        measure_classifier,
        save_training_report,
        train_classifier,
    )

    budget = _budget(args)
    config = ClassifierConfig(channels=tuple(args.channels), hidden=args.hidden)
    round_trip = None
    if args.vae_round_trip is not None:
        folder = ASSETS_DIR / BACKBONE_DIR if str(args.vae_round_trip) == "world" else args.vae_round_trip
        round_trip = VaeRoundTrip.from_backbone(folder, args.round_trip_fraction)
    classifier, log = train_classifier(config, budget=budget, robust=args.reading_augmentation, round_trip=round_trip)
    classifier.save(out)
    report = {"budget": budget, "augmentation": {"reading": args.reading_augmentation,
                                                 "vae_round_trip": str(args.vae_round_trip) if round_trip else None,
                                                 "round_trip_fraction": args.round_trip_fraction if round_trip else None},
              "training": log, "heldout_accuracy": measure_classifier(classifier)}
    save_training_report(out, "classifier", report)
    return report


def _encoder(args: argparse.Namespace, out: Path) -> dict:
    """The CLIP- or DINO-role encoder: train into ``out``, then measure what was saved there."""
    from dreambat_world import clip_role, dino_role
    from dreambat_world.evaluator_training import save_training_report

    train, measure = {"clip": (clip_role.train_clip, clip_role.measure_clip),
                      "dino": (dino_role.train_dino, dino_role.measure_dino)}[args.evaluator]
    budget = _budget(args)
    log = train(out, budget=budget)
    report = {"budget": budget, "training": log, "heldout": measure(out)}
    save_training_report(out, args.evaluator, report)
    return report


def _measure(_: argparse.Namespace, root: Path) -> dict:
    from dreambat_world.classifiers import AttributeClassifier
    from dreambat_world.clip_role import measure_clip
    from dreambat_world.dino_role import measure_dino
    from dreambat_world.evaluator_training import measure_classifier

    return {"classifier": measure_classifier(AttributeClassifier.load(root / "classifier")),
            "clip": measure_clip(root / "clip"), "dino": measure_dino(root / "dino")}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.evaluator == "measure":
        report = _measure(args, args.out or EVALUATORS_DIR)
    else:
        out = args.out or EVALUATORS_DIR / args.evaluator
        report = (_classifier if args.evaluator == "classifier" else _encoder)(args, out)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
