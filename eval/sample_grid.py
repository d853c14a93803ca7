#!/usr/bin/env python
"""Render prompts x seeds with a base model and a trained LoRA into one captioned PNG grid.

    python eval/sample_grid.py --pretrained_model_name_or_path outputs/demo/backbone \
        --lora_dir outputs/demo/lora --prompt "a photo of sks star" \
        --prompt "a photo of sks star on a blue background" --num_images 4 --output grid.png

Rows alternate base / LoRA for each prompt; column i uses seed ``--seed + i`` in both rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreambat.backbone.load import resolve_backbone
from dreambat.cli import setup_logging
from dreambat.constants import LORA_WEIGHTS_NAME
from dreambat.errors import DreambatError, ModelNotFoundError
from dreambat.training.validation import render_comparison


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="backbone folder or cached hub id")
    parser.add_argument("--lora_dir", required=True, help=f"folder holding {LORA_WEIGHTS_NAME}")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--num_images", type=int, default=4, help="images (seeds) per prompt")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default: native)")
    parser.add_argument("--output", default="sample_grid.png", help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        backbone = resolve_backbone(args.pretrained_model_name_or_path)
        if not (Path(args.lora_dir) / LORA_WEIGHTS_NAME).is_file():
            raise ModelNotFoundError(
                f"No {LORA_WEIGHTS_NAME} in '{args.lora_dir}'; pass the output_dir of a training run."
            )
        if args.num_images < 1:
            parser.error("--num_images must be >= 1")
        setup_logging()
        grid, _ = render_comparison(
            backbone, args.lora_dir, args.prompt, args.num_images, seed=args.seed,
            num_inference_steps=args.num_inference_steps, resolution=args.resolution,
        )
    except DreambatError as exc:
        print(f"sample_grid: error: {exc}", file=sys.stderr)
        return 2
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"Wrote {args.output} ({grid.width}x{grid.height}, {len(args.prompt)} prompt(s) x {args.num_images} seed(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
