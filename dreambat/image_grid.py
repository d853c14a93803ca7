"""Captioned image grids (validation samples, method comparisons)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

CAPTION_LINE_HEIGHT = 12
PADDING = 2


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    cell_size: int | None = None,
    label_width: int = 160,
) -> Image.Image:
    """Lay out ``rows`` of images in a grid, with optional row and column captions.

    Args:
        rows: ``rows[r][c]`` is the image of cell (r, c); every row has the same length.
        row_labels: one caption per row, drawn in a column on the left (wrapped).
        column_labels: one caption per column, drawn above it, wrapped to the cell width; the
            header is as tall as the longest caption needs (at least two lines), nothing is cut.
        cell_size: side of each square cell in pixels; defaults to the first image's width.
        label_width: width of the row-caption column when ``row_labels`` is given.

    Returns:
        An RGB image of ``(label_width? + cols * cell) x (header? + rows * cell)`` pixels, plus
        ``PADDING`` between cells.
    """
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one row with one image.")
    n_cols = len(rows[0])
    if any(len(row) != n_cols for row in rows):
        raise ValueError("image_grid: every row must have the same number of images.")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"image_grid: {len(row_labels)} row labels for {len(rows)} rows.")
    if column_labels is not None and len(column_labels) != n_cols:
        raise ValueError(f"image_grid: {len(column_labels)} column labels for {n_cols} columns.")
    cell = cell_size or rows[0][0].width
    left = label_width if row_labels is not None else 0
    header = [textwrap.wrap(label, max(1, cell // 6)) for label in column_labels or ()]
    top = max(2, *(len(lines) for lines in header)) * CAPTION_LINE_HEIGHT if column_labels is not None else 0
    width = left + n_cols * (cell + PADDING) + PADDING
    height = top + len(rows) * (cell + PADDING) + PADDING
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    chars_per_line = max(8, label_width // 7)
    for c, lines in enumerate(header):
        for i, line in enumerate(lines):
            draw.text((left + PADDING + c * (cell + PADDING), PADDING + i * CAPTION_LINE_HEIGHT), line,
                      fill="black", font=font)
    for r, row in enumerate(rows):
        y = top + PADDING + r * (cell + PADDING)
        if row_labels is not None:
            lines = textwrap.wrap(row_labels[r], chars_per_line)[: max(1, cell // CAPTION_LINE_HEIGHT)]
            for i, line in enumerate(lines):
                draw.text((PADDING, y + i * CAPTION_LINE_HEIGHT), line, fill="black", font=font)
        for c, image in enumerate(row):
            x = left + PADDING + c * (cell + PADDING)
            grid.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS), (x, y))
    return grid
