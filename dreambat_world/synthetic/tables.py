"""Attribute tables of the synthetic world: colours, shapes, patterns, background textures.

Everything else (sampling, drawing, captioning) is driven by these tables; adding a colour,
shape or pattern is one entry here. Also holds the geometry helpers that build shape outlines
and the painters that draw surface patterns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import ImageDraw

Point = tuple[float, float]
RGB = tuple[int, int, int]
# A pattern painter: (draw, to_px, radius_px, color); see _draw_stripes.
PatternPainter = Callable[[ImageDraw.ImageDraw, Callable[[float, float], Point], float, RGB], None]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (250, 130, 20),
    "yellow": (250, 215, 35),
    "green": (40, 160, 60),
    "blue": (35, 85, 215),
    "purple": (125, 50, 180),
    "pink": (245, 140, 200),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (130, 130, 130),
}
"""Named palette: colour word -> RGB. Names double as caption words."""


@dataclass(frozen=True)
class ShapeDef:
    """A shape: its caption words and its outline in unit coordinates.

    ``outline`` is a closed polygon centred on its bounding box and scaled so that its farthest
    vertex lies at distance 1 from the centre (y points down, as in images).
    """

    name: str
    plural: str
    outline: tuple[Point, ...]


@dataclass(frozen=True)
class PatternDef:
    """A surface pattern: its caption words and how to draw it.

    ``adjective`` is used in "a red striped star"; ``noun`` in "a red star with yellow stripes"
    (``None``: the pattern is never phrased with "with", e.g. plain). ``draw`` paints the
    pattern onto an object's fill layer, see :func:`_draw_stripes` for its signature.
    """

    name: str
    adjective: str
    noun: str | None
    draw: PatternPainter | None


@dataclass(frozen=True)
class TextureDef:
    """A background texture and its caption word (``None``: never mentioned)."""

    name: str
    word: str | None
    word_before_color: bool = True  # "a noisy blue background" vs "a blue gradient background"


def _normalise(points: Sequence[Point]) -> tuple[Point, ...]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    centred = [(x - cx, y - cy) for x, y in points]
    scale = max(math.hypot(x, y) for x, y in centred)
    return tuple((round(x / scale, 6), round(y / scale, 6)) for x, y in centred)


def _regular(n: int, start_deg: float, radii: Sequence[float] = (1.0,)) -> tuple[Point, ...]:
    pts = []
    for i in range(n * len(radii)):
        a = math.radians(start_deg + 360.0 * i / (n * len(radii)))
        r = radii[i % len(radii)]
        pts.append((r * math.cos(a), r * math.sin(a)))
    return _normalise(pts)


def _heart(n: int = 48) -> tuple[Point, ...]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))
    return _normalise(pts)


def _cross(arm: float = 0.34) -> tuple[Point, ...]:
    a = arm
    return _normalise([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                       (-a, a), (-1, a), (-1, -a), (-a, -a)])


SHAPES: dict[str, ShapeDef] = {
    s.name: s
    for s in (
        ShapeDef("circle", "circles", _regular(48, 0)),
        ShapeDef("square", "squares", _regular(4, 45)),
        ShapeDef("triangle", "triangles", _regular(3, -90)),
        ShapeDef("star", "stars", _regular(5, -90, radii=(1.0, 0.42))),
        ShapeDef("heart", "hearts", _heart()),
        ShapeDef("hexagon", "hexagons", _regular(6, 0)),
        ShapeDef("cross", "crosses", _cross()),
        ShapeDef("diamond", "diamonds", _normalise([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)])),
    )
}
"""Shape name -> :class:`ShapeDef`. Names double as caption words (and DreamBooth class words)."""


# Pattern painters. ``to_px(u, v)`` maps the object's local unit frame (the outline's frame,
# rotated with the object) to pixels of the fill layer; ``radius`` is the object's radius in
# those pixels. Patterns cover the whole unit disc (and a little more); the shape mask clips them.

def _draw_stripes(draw: ImageDraw.ImageDraw, to_px: Callable[[float, float], Point],
                  radius: float, color: tuple[int, int, int]) -> None:
    period = 2.0 / 3.0  # three stripes across the diameter
    for k in range(-3, 3):
        v0 = (k + 0.25) * period
        v1 = v0 + period / 2
        draw.polygon([to_px(-1.5, v0), to_px(1.5, v0), to_px(1.5, v1), to_px(-1.5, v1)], fill=color)


def _draw_dots(draw: ImageDraw.ImageDraw, to_px: Callable[[float, float], Point],
               radius: float, color: tuple[int, int, int]) -> None:
    spacing = 2.0 / 3.2
    dot = 0.29 * spacing * radius
    for j in range(-3, 4):
        offset = spacing / 2 if j % 2 else 0.0  # staggered rows: polka dots
        for i in range(-3, 4):
            u, v = i * spacing + offset, j * spacing * 0.9
            if u * u + v * v > 1.3:
                continue
            x, y = to_px(u, v)
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=color)


def _draw_checks(draw: ImageDraw.ImageDraw, to_px: Callable[[float, float], Point],
                 radius: float, color: tuple[int, int, int]) -> None:
    cell = 2.0 / 4.0  # four cells across the diameter
    for j in range(-3, 3):
        for i in range(-3, 3):
            if (i + j) % 2:
                continue
            u0, v0 = i * cell, j * cell
            draw.polygon([to_px(u0, v0), to_px(u0 + cell, v0), to_px(u0 + cell, v0 + cell),
                          to_px(u0, v0 + cell)], fill=color)


PATTERNS: dict[str, PatternDef] = {
    p.name: p
    for p in (
        PatternDef("plain", "plain", None, None),
        PatternDef("striped", "striped", "stripes", _draw_stripes),
        PatternDef("dotted", "dotted", "dots", _draw_dots),
        PatternDef("checkered", "checkered", "checks", _draw_checks),
    )
}
"""Pattern name -> :class:`PatternDef`."""

BACKGROUND_TEXTURES: dict[str, TextureDef] = {
    t.name: t
    for t in (
        TextureDef("plain", None),
        TextureDef("gradient", "gradient", word_before_color=False),
        TextureDef("noise", "noisy", word_before_color=True),
    )
}
"""Background texture name -> :class:`TextureDef`."""

# Sampling weights (name -> weight); names missing here get weight 1.
PATTERN_WEIGHTS: dict[str, float] = {"plain": 2.0}
TEXTURE_WEIGHTS: dict[str, float] = {"plain": 3.0}
