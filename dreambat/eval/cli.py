"""Flags of ``dreambat eval`` / ``eval/dreambench.py`` and ``dreambat grid`` / ``eval/sample_grid.py``.

Both entry points share these parsers; flags are turned into a typed config once, here, and the
argparse namespace goes no further.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..constants import LORA_WEIGHTS_NAME
from ..errors import DreambatError
from .constants import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_DEVICE,
    DEFAULT_DINO_MODEL,
    DEFAULT_DTYPE,
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_GRID_LAYOUT,
    DTYPES,
    GRID_INFERENCE_STEPS,
    GRID_LAYOUTS,
    METRIC_NAMES,
    SCHEDULER_NAMES,
)

if TYPE_CHECKING:
    from .config import DreamBenchConfig

DREAMBENCH_EXAMPLE = """example:
  dreambat eval --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --lora_dir runs/dreambooth --method_name dreambooth --lora_dir runs/bat --method_name bat \\
      --dreambench_dir dreambench/dataset --num_images 4 --output_dir results/dreambench

A --lora_dir holds pytorch_lora_weights.safetensors, or one such folder per subject
(<lora_dir>/<subject>/). --subject FOLDER=CLASS[:live|object] adds a subject of your own."""


def _common_generation_arguments(parser: argparse.ArgumentParser, *, steps: int) -> None:
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="backbone folder or cached hub id")
    parser.add_argument("--lora_dir", action="append", default=[],
                        help=f"folder holding {LORA_WEIGHTS_NAME} (repeat to compare several)")
    parser.add_argument("--method_name", action="append", default=[],
                        help="name of each --lora_dir, in the same order (default: the folder names)")
    parser.add_argument("--no_base", action="store_true", help="leave the base model (method 'base') out")
    parser.add_argument("--num_images", type=int, default=4, help="images (seeds) per prompt")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--num_inference_steps", type=int, default=steps, help="sampler steps")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default: the backbone's)")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None,
                        help="sampler (default: the backbone folder's)")
    parser.add_argument("--batch_size", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="'auto' (CUDA if available), 'cpu', 'cuda:1', ...")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES,
                        help="dtype of the diffusion pipeline")


def add_dreambench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the DreamBench runner."""
    _common_generation_arguments(parser, steps=50)
    parser.add_argument("--revision", default=None, help="revision of a cached hub backbone")
    parser.add_argument("--subject", action="append", default=[], metavar="FOLDER=CLASS[:live|object]",
                        help="a subject folder and its class noun (repeatable); live subjects get the "
                             "live prompt set (default: class noun cat/dog)")
    parser.add_argument("--dreambench_dir", default=None, help="DreamBench dataset/ folder (its 30 subjects)")
    parser.add_argument("--dreambench_subject", action="append", default=[],
                        help="with --dreambench_dir: only these subjects (repeatable)")
    parser.add_argument("--prompts_file", default=None, help="prompt templates JSON (default: assets/dreambench)")
    parser.add_argument("--num_prompts", type=int, default=None, help="use only the first N templates")
    parser.add_argument("--unique_token", default="sks", help="the token the LoRAs were trained with")
    parser.add_argument("--metrics", nargs="+", default=list(METRIC_NAMES), help="subset of dino clip_i clip_t")
    parser.add_argument("--dino_model", default=DEFAULT_DINO_MODEL, help="transformers folder or cached hub id")
    parser.add_argument("--clip_model", default=DEFAULT_CLIP_MODEL,
                        help="open_clip name, model-config JSON, or local-dir:FOLDER")
    parser.add_argument("--clip_pretrained", default=DEFAULT_CLIP_PRETRAINED,
                        help="open_clip pretrained tag (from the HF cache) or checkpoint file")
    parser.add_argument("--eval_batch_size", type=int, default=DEFAULT_EVAL_BATCH_SIZE, help="images per evaluator forward")
    parser.add_argument("--output_dir", default="dreambench_results", help="images, tables and plot go here")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def dreambench_config(args: argparse.Namespace) -> DreamBenchConfig:
    """Validated :class:`~dreambat.eval.config.DreamBenchConfig` from parsed flags (raises ``DreambatError``)."""
    from .config import (
        DreamBenchConfig,
        EncoderSettings,
        GenerationSettings,
        build_methods,
        dreambench_subjects,
        parse_subject,
    )
    from .prompts import DreamBenchPrompts

    prompts = DreamBenchPrompts.load(args.prompts_file)
    subjects = [parse_subject(spec, prompts) for spec in args.subject]
    if args.dreambench_dir:
        subjects += dreambench_subjects(args.dreambench_dir, prompts, args.dreambench_subject)
    return DreamBenchConfig(
        pretrained_model_name_or_path=args.pretrained_model_name_or_path,
        methods=build_methods(args.lora_dir, args.method_name, include_base=not args.no_base),
        subjects=subjects,
        output_dir=args.output_dir,
        generation=GenerationSettings(
            num_images=args.num_images, seed=args.seed, num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale, resolution=args.resolution, unique_token=args.unique_token,
            scheduler=args.scheduler, num_prompts=args.num_prompts, batch_size=args.batch_size,
        ),
        encoders=EncoderSettings(args.dino_model, args.clip_model, args.clip_pretrained, args.eval_batch_size),
        metrics=tuple(args.metrics),
        prompts_file=args.prompts_file,
        device=args.device,
        dtype=args.dtype,
        revision=args.revision,
    )


def run_dreambench_command(args: argparse.Namespace) -> int:
    """Parse flags into a config, run, print the table and where everything went."""
    from ..logs import setup_logging
    from .runner import run_dreambench

    config = dreambench_config(args)
    setup_logging()
    result = run_dreambench(config, progress=not args.no_progress)
    print(result.paths["md"].read_text())
    print(f"Generated {result.generated} image(s), reused {result.reused} already on disk.")
    for kind, path in result.paths.items():
        print(f"  {kind:4s} {path}")
    return 0


def add_grid_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the sample grid."""
    _common_generation_arguments(parser, steps=GRID_INFERENCE_STEPS)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--layout", default=DEFAULT_GRID_LAYOUT, choices=GRID_LAYOUTS,
                        help="rows (prompt, method) x columns seeds, or rows methods x columns prompts")
    parser.add_argument("--cell_size", type=int, default=None, help="cell side in pixels (default: max(96, image))")
    parser.add_argument("--output", default="sample_grid.png", help="PNG file to write")
    return parser


def run_grid_command(args: argparse.Namespace) -> int:
    """Parse flags into a :class:`GridConfig`, render, save the PNG."""
    from pathlib import Path

    from ..logs import setup_logging
    from .config import GenerationSettings, build_methods
    from .grids import GridConfig, render_grid

    config = GridConfig(
        pretrained_model_name_or_path=args.pretrained_model_name_or_path,
        methods=build_methods(args.lora_dir, args.method_name, include_base=not args.no_base),
        prompts=args.prompt,
        generation=GenerationSettings(
            num_images=args.num_images, seed=args.seed, num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale, resolution=args.resolution, scheduler=args.scheduler,
            batch_size=args.batch_size,
        ),
        layout=args.layout, cell_size=args.cell_size, device=args.device, dtype=args.dtype,
    )
    setup_logging()
    grid, images = render_grid(config)  # checks the inputs (and resolves the backbone) before loading
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output)
    print(f"Wrote {output} ({grid.width}x{grid.height}: {len(images)} method(s) x {len(args.prompt)} prompt(s) "
          f"x {args.num_images} seed(s))")
    return 0


def _main(add_arguments, run, argv: Sequence[str] | None, prog: str | None, description: str,
          epilog: str | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DreambatError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def dreambench_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``eval/dreambench.py``: the DreamBench runner."""
    return _main(add_dreambench_arguments, run_dreambench_command, argv, prog,
                 "Generate DreamBench images for the base model and LoRAs, score DINO / CLIP-I / CLIP-T, "
                 "and write CSV / JSON / Markdown tables and a bar chart.", DREAMBENCH_EXAMPLE)


def grid_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``eval/sample_grid.py``: one captioned PNG of prompts x seeds (or methods x prompts)."""
    return _main(add_grid_arguments, run_grid_command, argv, prog,
                 "Render prompts x seeds with the base model and one or more LoRAs into one captioned PNG grid.")
