"""Command-line entry points: ``dreambat <command>`` and ``train_dreambooth_bat.py``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import DreambatError
from .logs import setup_logging
from .parsing import parse_config
from .preemption import run_command


TRAIN_DESCRIPTION = """\
DreamBooth-LoRA with Backbone Augmented Training (BAT) for diffusers Stable Diffusion backbones.
The DreamBooth flags match diffusers' examples/dreambooth/train_dreambooth_lora.py. With
--selection albat (the default) a surrogate LoRA is trained on the subject, backbone candidates
from --backbone_shards are scored by their influence on the subject loss, the helpful ones are
kept, and the final LoRA trains on the subject plus the kept images (share --augmentation_ratio).
--selection none is plain DreamBooth-LoRA."""

SCORE_DESCRIPTION = """\
Score LAION-style backbone candidates by their influence on a surrogate LoRA's subject loss (ALBAT)
and write selection.jsonl. Launch with accelerate/torchrun for several processes."""


def parse_train_config(argv: Sequence[str] | None = None, prog: str | None = None):
    """DreamBooth flags alone -> :class:`TrainConfig` (for library users; the CLI takes BAT flags too)."""
    from .training.config import TrainConfig

    return parse_config((TrainConfig,), argv, prog, TRAIN_DESCRIPTION)[0]


def parse_run_config(argv: Sequence[str] | None = None, prog: str | None = None):
    """Training + BAT flags -> :class:`~dreambat.bat.config.BatSettings`, validated, nothing loaded."""
    from .bat.config import BatSettings

    return parse_config(BatSettings.GROUPS, argv, prog, TRAIN_DESCRIPTION, bundle=BatSettings)


def parse_score_config(argv: Sequence[str] | None = None, prog: str | None = None):
    """``dreambat score`` flags -> :class:`~dreambat.scoring.config.ScoreSettings`, validated."""
    from .scoring.config import ScoreSettings, check_score_command

    def bundle(*groups):
        settings = ScoreSettings(*groups)
        check_score_command(settings)
        return settings

    return parse_config(ScoreSettings.GROUPS, argv, prog, SCORE_DESCRIPTION, bundle=bundle)


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``train_dreambooth_bat.py`` / ``dreambat train``: parse, then run the BAT stages."""
    settings = parse_run_config(argv, prog=prog)
    setup_logging()
    from .bat.pipeline import run_bat

    def run() -> int:
        result = run_bat(settings)
        if result.report_path is not None:
            print(_outputs_summary(result))
        return 0

    return run_command(prog or "dreambat train", run)


def _outputs_summary(result) -> str:
    rows = [("LoRA weights", result.lora_path), ("selection manifest", result.manifest_path),
            ("report", result.report_path), ("validation grid", result.grid_path)]
    return "Outputs:\n" + "\n".join(f"  {name:<20} {path}" for name, path in rows if path is not None)


def score_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``dreambat score``: ALBAT scores of backbone candidates for a surrogate LoRA."""
    settings = parse_score_config(argv, prog)
    setup_logging()
    from .scoring.run import run_scoring

    def run() -> int:
        result = run_scoring(settings)
        if result.report:
            counts = result.report["counts"]
            print(
                f"Scored {counts.get('yielded', 0)} candidates ({counts.get('skipped', 0)} skipped while reading, "
                f"{counts['skipped_nonfinite_loss']} non-finite), selected {counts['selected']}.\n"
                f"  manifest  {result.manifest_path}\n  report    {result.report_path}"
            )
        return 0

    return run_command(prog or "dreambat score", run)


MAKE_BACKBONE_SIZES = ("test", "demo", "sd15", "test-sdxl", "sdxl")
"""``make-backbone --size`` choices: :data:`dreambat.backbone.tiny.BACKBONE_SIZES`, spelt out so the
parser builds without importing torch."""


def _make_backbone(args: argparse.Namespace) -> int:
    from .backbone.tiny import write_tiny_backbone

    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    folder = write_tiny_backbone(args.folder, args.size, seed=args.seed, overwrite=args.overwrite, dtype=dtype)
    kind = {"sd15": "an SD-1.5-shaped (random weights) Stable Diffusion",
            "sdxl": "an SDXL-base-1.0-shaped (random weights) Stable Diffusion XL",
            "test-sdxl": "a tiny Stable Diffusion XL"}.get(args.size, f"a tiny '{args.size}' Stable Diffusion")
    print(f"Wrote {kind} backbone to {folder}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    from .data.shards import ShardReader

    reader = ShardReader(args.urls, max_candidates=args.max_candidates, filters=args.filter)
    for sample in reader:
        if args.show:
            print(f"{sample.key}\t{sample.image.width}x{sample.image.height}\t{sample.caption}")
            args.show -= 1
    print(reader.stats.summary())
    return 0


def eval_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``dreambat eval`` (same flags as ``eval/dreambench.py``): see :mod:`dreambat.eval.cli`."""
    from .eval.cli import dreambench_main

    return dreambench_main(argv, prog)


def grid_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``dreambat grid`` (same flags as ``eval/sample_grid.py``): see :mod:`dreambat.eval.cli`."""
    from .eval.cli import grid_main as main

    return main(argv, prog)


# Commands whose flags are setting groups, each parsed by its own parser (``dreambat CMD --help``).
SETTINGS_COMMANDS = {"train": train_main, "score": score_main, "eval": eval_main, "grid": grid_main}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreambat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "train", add_help=False, help="DreamBooth-LoRA training (same flags as train_dreambooth_bat.py)"
    )
    commands.add_parser("score", add_help=False, help="ALBAT-score backbone shards for a surrogate LoRA")

    make = commands.add_parser("make-backbone", help="write an offline Stable Diffusion folder (random weights)")
    make.add_argument("folder", help="where to write the diffusers folder")
    make.add_argument("--size", default="demo", choices=MAKE_BACKBONE_SIZES,
                      help="test / demo: tiny; sd15: SD-1.5's exact shapes and CLIP tokenizer (4.3 GB at fp32); "
                           "test-sdxl: a tiny SDXL; sdxl: SDXL-base-1.0's exact shapes (14 GB at fp32)")
    make.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weight dtype (sd15, sdxl)")
    make.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    make.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    make.set_defaults(func=_make_backbone)

    shards = commands.add_parser("shards", help="read LAION-style shards and report what is usable")
    shards.add_argument("urls", nargs="+", help="shard paths, brace patterns or pipe: URLs")
    shards.add_argument("--max_candidates", type=int, default=None, help="stop after this many")
    shards.add_argument("--filter", action="append", default=[], help="metadata filter, e.g. 'width>=256'")
    shards.add_argument("--show", type=int, default=0, help="print the first N samples")
    shards.set_defaults(func=_shards)

    commands.add_parser("eval", add_help=False,
                        help="DreamBench evaluation: generate, score DINO / CLIP-I / CLIP-T, tables and plot")
    commands.add_parser("grid", add_help=False, help="captioned sample grid: base model and LoRAs, prompts x seeds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``dreambat`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SETTINGS_COMMANDS:
        return SETTINGS_COMMANDS[argv[0]](argv[1:], prog=f"dreambat {argv[0]}")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DreambatError as exc:
        print(f"dreambat {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
