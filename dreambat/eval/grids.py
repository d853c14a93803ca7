"""Sample grids: several LoRAs side by side with the base model, same prompts and seeds.

Two layouts, both one captioned PNG (:func:`dreambat.image_grid.image_grid`):

- ``prompts_x_seeds``: one row per (prompt, method), grouped by prompt; column ``i`` is seed
  ``seed + i`` in every row, so cells in a column differ only by the method.
- ``methods_x_prompts``: one row per method; columns are prompts (times seeds, prompt-major).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..backbone.load import resolve_backbone
from ..errors import ConfigError
from ..image_grid import image_grid
from .config import Method, SamplingSettings
from .constants import DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_GRID_LAYOUT, DTYPES
from .constants import GRID_LAYOUTS as LAYOUTS
from .encoders import resolve_device
from .generation import LoraSwitch, generate_images, load_pipeline, torch_dtype


@dataclass
class GridConfig:
    """What to render: backbone, methods (base and/or LoRAs), prompts, seeds, layout."""

    pretrained_model_name_or_path: str
    methods: list[Method]
    prompts: list[str]
    generation: SamplingSettings
    layout: str = DEFAULT_GRID_LAYOUT
    cell_size: int | None = None
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ConfigError(f"Unknown --layout {self.layout!r}; choose from {', '.join(LAYOUTS)}.")
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise ConfigError("Pass at least one non-empty --prompt.")
        if not self.methods:
            raise ConfigError("Nothing to render: pass --lora_dir and/or keep the base model.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"Unknown --dtype {self.dtype!r}; choose from {', '.join(DTYPES)}.")
        if self.cell_size is not None and self.cell_size < 8:
            raise ConfigError(f"--cell_size must be at least 8 pixels, got {self.cell_size}.")

    def check_files(self) -> Path:
        """The backbone folder, after checking it and every LoRA (before any model loads).

        :func:`render_grid` calls it, once: the only place a grid resolves its backbone.
        """
        folder = resolve_backbone(self.pretrained_model_name_or_path)
        for method in self.methods:
            method.single_lora()
        return folder


def render_grid(config: GridConfig) -> tuple[Image.Image, dict[str, list[list[Image.Image]]]]:
    """Render the grid of ``config``.

    Returns:
        ``(grid, images)`` where ``images[method][p][i]`` is prompt ``p`` with seed ``seed + i``.
    """
    folder = config.check_files()
    settings = config.generation
    pipeline = load_pipeline(folder, device=resolve_device(config.device), dtype=torch_dtype(config.dtype),
                             scheduler=settings.scheduler)
    switch = LoraSwitch(pipeline)
    seeds = [settings.seed + i for i in range(settings.num_images)]
    pairs = [(prompt, seed) for prompt in config.prompts for seed in seeds]
    images: dict[str, list[list[Image.Image]]] = {}
    for method in config.methods:
        switch.use(method.single_lora())
        flat: list[Image.Image] = []
        for start in range(0, len(pairs), settings.batch_size):
            batch = pairs[start:start + settings.batch_size]
            flat += generate_images(pipeline, [p for p, _ in batch], [s for _, s in batch], settings)
        n = settings.num_images
        images[method.name] = [flat[k * n:(k + 1) * n] for k in range(len(config.prompts))]
    switch.use(None)
    return layout_grid(images, config.prompts, seeds, config.layout, cell_size=config.cell_size), images


def layout_grid(images: dict[str, list[list[Image.Image]]], prompts: Sequence[str], seeds: Sequence[int],
                layout: str = DEFAULT_GRID_LAYOUT, *, cell_size: int | None = None) -> Image.Image:
    """Arrange ``images[method][prompt_index][seed_index]`` into one captioned grid (see module doc)."""
    first = next(iter(images.values()))[0][0]
    cell = cell_size or max(96, first.width)
    if layout == "prompts_x_seeds":
        rows = [images[m][p] for p in range(len(prompts)) for m in images]
        labels = [f"{m}: {prompt}" for prompt in prompts for m in images]
        columns = [f"seed {seed}" for seed in seeds]
    elif layout == "methods_x_prompts":
        rows = [[image for per_prompt in images[m] for image in per_prompt] for m in images]
        labels = list(images)
        columns = [f"{prompt}" if len(seeds) == 1 else f"s{seed}: {prompt}" for prompt in prompts for seed in seeds]
    else:
        raise ConfigError(f"Unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}.")
    return image_grid(rows, row_labels=labels, column_labels=columns, cell_size=cell)
