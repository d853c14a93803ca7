"""Rendering of synthetic scenes: backgrounds, objects and their patterns, supersampled."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image, ImageDraw

from .specs import ObjectSpec, SceneSpec
from .tables import BACKGROUND_TEXTURES, COLORS, PATTERNS, SHAPES, Point

# Shapes are drawn on a canvas this many times larger than the output, then box-downsampled.
SUPERSAMPLE = 4


def _stable_rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) * (1 - t) + np.asarray(b, dtype=np.float32) * t


def _background(scene: SceneSpec, size: int, ss: int, rng: np.random.Generator | None) -> Image.Image:
    color = COLORS[scene.background]
    side = size * ss
    texture = scene.background_texture
    if texture == "plain":
        return Image.new("RGB", (side, side), color)
    if texture == "gradient":
        # Lighter at the top, darker at the bottom (white only darkens, black only lightens).
        top = _mix(color, (255, 255, 255), 0.4)
        bottom = _mix(color, (0, 0, 0), 0.3)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
        rows = top[None, :] * (1 - t) + bottom[None, :] * t  # (size, 3)
        arr = np.broadcast_to(rows[:, None, :], (size, size, 3))
    elif texture == "noise":
        noise_rng = rng if rng is not None else _stable_rng("noise", scene, size)
        noise = noise_rng.normal(0.0, 18.0, size=(size, size, 1)).astype(np.float32)
        arr = np.asarray(color, dtype=np.float32)[None, None, :] + noise
    else:
        raise ValueError(f"Unknown background texture {texture!r}; known: {sorted(BACKGROUND_TEXTURES)}.")
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr), "RGB").resize((side, side), Image.NEAREST)


def _draw_object(canvas: Image.Image, obj: ObjectSpec) -> None:
    side = canvas.size[0]
    radius = obj.size * side / 2.0
    cx, cy = obj.position[0] * side, obj.position[1] * side
    # A local patch around the object: draw there, paste through the shape mask.
    x0, y0 = int(math.floor(cx - radius)) - 2, int(math.floor(cy - radius)) - 2
    patch = int(math.ceil(2 * radius)) + 5
    ox, oy = cx - x0, cy - y0
    theta = math.radians(obj.rotation)
    cos_t, sin_t = math.cos(theta), math.sin(theta)

    def to_px(u: float, v: float) -> Point:
        # Counter-clockwise on screen (y down) is a clockwise rotation in (u, v).
        return (ox + radius * (u * cos_t + v * sin_t), oy + radius * (-u * sin_t + v * cos_t))

    try:
        shape = SHAPES[obj.shape]
        pattern = PATTERNS[obj.pattern]
        fill_color = COLORS[obj.color]
        pattern_color = COLORS[obj.pattern_color]
    except KeyError as exc:
        raise ValueError(f"Unknown attribute {exc.args[0]!r} in {obj}.") from None

    mask = Image.new("L", (patch, patch), 0)
    ImageDraw.Draw(mask).polygon([to_px(u, v) for u, v in shape.outline], fill=255)
    fill = Image.new("RGB", (patch, patch), fill_color)
    if pattern.draw is not None:
        pattern.draw(ImageDraw.Draw(fill), to_px, radius, pattern_color)
    canvas.paste(fill, (x0, y0), mask)


def render(scene: SceneSpec, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw ``scene`` as a ``size``×``size`` RGB image.

    Shapes are drawn at :data:`SUPERSAMPLE`× resolution and box-downsampled (antialiasing);
    patterns are clipped to their shape through its mask. ``rng`` only feeds the "noise"
    background texture; without one, the noise is derived from the scene itself, so
    ``render(scene)`` is a pure function.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    canvas = _background(scene, size, SUPERSAMPLE, rng)
    for obj in scene.objects:
        _draw_object(canvas, obj)
    return canvas.reduce(SUPERSAMPLE) if SUPERSAMPLE > 1 else canvas
