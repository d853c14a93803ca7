"""Entry points of ``dreambat eval`` / ``eval/dreambench.py`` and ``dreambat grid`` / ``eval/sample_grid.py``.

Both pairs parse the setting groups of :mod:`dreambat.eval.flags` with the parser that training and
scoring use (:func:`dreambat.cli.config_parser`), once, into a typed config; nothing below sees a flag.
An unknown flag or a value of the wrong type exits 2 with argparse's usage message; a value the
settings refuse (a bad --subject, an unknown metric, a missing LoRA file) prints ``PROG: error:
...`` and returns 2. Either way, before any model loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..parsing import config_parser, parse_config, parse_groups
from ..preemption import run_command
from .constants import GRID_INFERENCE_STEPS
from .flags import DreamBenchSettings, GridSettings

DREAMBENCH_DESCRIPTION = """\
Generate DreamBench images for the base model and LoRAs, score DINO / CLIP-I / CLIP-T and DreamBooth's
PRES / DIV, and write CSV / JSON / Markdown tables and a bar chart. `dreambat eval` and eval/dreambench.py take the same flags."""

DREAMBENCH_EXAMPLE = """example:
  dreambat eval --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --lora_dir runs/dreambooth --method_name dreambooth --lora_dir runs/bat --method_name bat \\
      --dreambench_dir dreambench/dataset --num_images 4 --output_dir results/dreambench

A --lora_dir holds pytorch_lora_weights.safetensors, or one such folder per subject
(<lora_dir>/<subject>/). --subject FOLDER=CLASS[:live|object] adds a subject of your own."""

GRID_DESCRIPTION = """\
Render prompts x seeds (or methods x prompts) with the base model and one or more LoRAs side by side
into one captioned PNG. `dreambat grid` and eval/sample_grid.py take the same flags."""


@dataclass(frozen=True)
class Command:
    """One command: its bundle of setting groups and its ``--help`` text, defined once for both
    entry points (``dreambat eval`` and ``eval/dreambench.py``, say)."""

    settings: type
    description: str
    epilog: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)  # overrides of group defaults (see config_parser)

    def parser(self, prog: str | None = None):
        """The command's ``HfArgumentParser`` (:func:`dreambat.cli.config_parser`)."""
        return config_parser(self.settings.GROUPS, prog, self.description, epilog=self.epilog, defaults=self.defaults)

    def parse(self, argv: Sequence[str] | None = None, prog: str | None = None):
        """Flags -> validated settings, nothing loaded; exits 2 on bad flags, like :func:`dreambat.cli.parse_config`."""
        return parse_config(self.settings.GROUPS, argv, prog, self.description, bundle=self.settings,
                            epilog=self.epilog, defaults=self.defaults)

    def main(self, run: Callable[[Any], int], argv: Sequence[str] | None, prog: str | None) -> int:
        """Parse and ``run``; a :class:`DreambatError` while checking or running is ``PROG: error: ...``, code 2;
        a stop signal ends it at the next saved image (:func:`dreambat.preemption.run_command`)."""
        parser = self.parser(prog)
        return run_command(parser.prog, lambda: run(self.settings(*parse_groups(parser, argv))))


DREAMBENCH = Command(DreamBenchSettings, DREAMBENCH_DESCRIPTION, DREAMBENCH_EXAMPLE)
# A grid is a quick look: fewer sampler steps than DreamBench's default (--help shows 25).
GRID = Command(GridSettings, GRID_DESCRIPTION, defaults={"num_inference_steps": GRID_INFERENCE_STEPS})


def parse_dreambench_settings(argv: Sequence[str] | None = None, prog: str | None = None) -> DreamBenchSettings:
    """``dreambat eval`` flags -> :class:`~dreambat.eval.flags.DreamBenchSettings`, validated, no model loaded."""
    return DREAMBENCH.parse(argv, prog)


def parse_grid_settings(argv: Sequence[str] | None = None, prog: str | None = None) -> GridSettings:
    """``dreambat grid`` flags -> :class:`~dreambat.eval.flags.GridSettings`, validated, no model loaded."""
    return GRID.parse(argv, prog)


def run_dreambench_command(settings: DreamBenchSettings) -> int:
    """Run the parsed ``dreambat eval``, print the table and where everything went."""
    from ..logs import setup_logging
    from .runner import run_dreambench

    setup_logging()
    result = run_dreambench(settings.config, progress=not settings.output.no_progress)
    print(result.paths["md"].read_text())
    print(f"Generated {result.generated} image(s), reused {result.reused} already on disk.")
    for kind, path in result.paths.items():
        print(f"  {kind:4s} {path}")
    return 0


def run_grid_command(settings: GridSettings) -> int:
    """Render the parsed ``dreambat grid`` (its inputs are checked before the pipeline loads), save the PNG."""
    from ..logs import setup_logging
    from .grids import render_grid

    setup_logging()
    grid, images = render_grid(settings.config)
    output = Path(settings.grid.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output)
    print(f"Wrote {output} ({grid.width}x{grid.height}: {len(images)} method(s) x {len(settings.grid.prompt)} "
          f"prompt(s) x {settings.sampling.num_images} seed(s))")
    return 0


def dreambench_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``eval/dreambench.py`` / ``dreambat eval``: the DreamBench runner."""
    return DREAMBENCH.main(run_dreambench_command, argv, prog)


def grid_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``eval/sample_grid.py`` / ``dreambat grid``: one captioned PNG of prompts x seeds (or methods x prompts)."""
    return GRID.main(run_grid_command, argv, prog)
