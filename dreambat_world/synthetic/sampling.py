"""Random sampling of synthetic scenes: designs, scenes, subject photos and the backbone pool."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .captions import COUNT_WORDS, caption
from .drawing import render
from .specs import Design, ObjectSpec, SceneSpec, Subject
from .tables import (
    BACKGROUND_TEXTURES,
    COLORS,
    PATTERN_WEIGHTS,
    PATTERNS,
    SHAPES,
    TEXTURE_WEIGHTS,
)

DEMO_SUBJECT = Subject(
    name="dotted_purple_star",
    class_word="star",
    design=Design(shape="star", color="purple", pattern="dotted", pattern_color="yellow"),
)
"""The demo subject: a purple star with yellow polka dots."""


def _weighted(rng: np.random.Generator, names: Sequence[str], weights: Mapping[str, float]) -> str:
    p = np.asarray([weights.get(n, 1.0) for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def random_design(rng: np.random.Generator, *, avoid_colors: Sequence[str] = ()) -> Design:
    """A random shape, colour (not in ``avoid_colors``), pattern and contrasting pattern colour.

    A plain design's ``pattern_color`` equals its colour (it is never drawn).
    """
    shape = list(SHAPES)[int(rng.integers(len(SHAPES)))]
    colors = [c for c in COLORS if c not in avoid_colors] or list(COLORS)
    color = colors[int(rng.integers(len(colors)))]
    pattern = _weighted(rng, list(PATTERNS), PATTERN_WEIGHTS)
    if PATTERNS[pattern].draw is None:
        return Design(shape, color, pattern, color)
    others = [c for c in COLORS if c != color and c not in avoid_colors] or [c for c in COLORS if c != color]
    return Design(shape, color, pattern, others[int(rng.integers(len(others)))])


def _place(rng: np.random.Generator, sizes: Sequence[float]) -> list[tuple[float, float]]:
    """Centres keeping every object inside the frame and, where possible, apart."""
    positions: list[tuple[float, float]] = []
    for size in sizes:
        r = size / 2
        lo, hi = r + 0.02, 1 - r - 0.02
        candidate = (0.5, 0.5)
        for _ in range(50):
            candidate = tuple(round(float(v), 3) for v in rng.uniform(lo, max(lo, hi), size=2))
            if all(math.hypot(candidate[0] - px, candidate[1] - py) >= 0.9 * (r + ps / 2)
                   for (px, py), ps in zip(positions, sizes)):
                break
        positions.append(candidate)  # type: ignore[arg-type]
    return positions


def _size_range(count: int) -> tuple[float, float]:
    return (0.3, 0.75) if count == 1 else (0.25, max(0.27, min(0.45, 0.9 / count)))


def random_scene(
    rng: np.random.Generator,
    *,
    exclude: Callable[[ObjectSpec], bool] | None = None,
    max_objects: int = 2,
    max_tries: int = 1000,
) -> SceneSpec:
    """A random scene of 1..``max_objects`` objects (one object most often).

    Multi-object scenes repeat one design 40% of the time ("two green circles"). Objects never
    take the background colour. ``exclude(obj)`` rejects objects (resampled, up to
    ``max_tries`` times per object), e.g. ``DEMO_SUBJECT.matches`` keeps the subject's design out.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}.")
    if max_objects > max(COUNT_WORDS):
        raise ValueError(f"max_objects must be <= {max(COUNT_WORDS)} (captions count in words).")
    counts = np.arange(1, max_objects + 1)
    p = np.full(max_objects, 0.4 / max(1, max_objects - 1))
    p[0] = 0.6 if max_objects > 1 else 1.0
    count = int(rng.choice(counts, p=p / p.sum()))
    background = list(COLORS)[int(rng.integers(len(COLORS)))]
    texture = _weighted(rng, list(BACKGROUND_TEXTURES), TEXTURE_WEIGHTS)
    repeat = count > 1 and rng.random() < 0.4
    lo, hi = _size_range(count)

    objects: list[ObjectSpec] = []
    design: Design | None = None
    sizes = [round(float(rng.uniform(lo, hi)), 3) for _ in range(count)]
    positions = _place(rng, sizes)
    for size, position in zip(sizes, positions):
        for _ in range(max_tries):
            if design is None or not repeat:
                design = random_design(rng, avoid_colors=(background,))
            obj = design.place(size, position, round(float(rng.uniform(-30.0, 30.0)), 1))
            if exclude is None or not exclude(obj):
                break
            design = None
        else:
            raise RuntimeError(f"random_scene: exclude rejected {max_tries} objects in a row.")
        objects.append(obj)
    return SceneSpec(tuple(objects), background, texture)


def subject_in_scene(
    subject: Subject,
    rng: np.random.Generator,
    *,
    background: str | None = None,
    background_texture: str | None = None,
    size: float | None = None,
    position: tuple[float, float] | None = None,
    rotation: float | None = None,
    distractors: int = 0,
) -> SceneSpec:
    """A scene showing ``subject``; any pose or background argument left out is random.

    A random background avoids the subject's colour and pattern colour. ``distractors`` adds
    that many other random objects (never the subject's design), drawn behind the subject.
    """
    d = subject.design
    if background is None:
        choices = [c for c in COLORS if c not in (d.color, d.pattern_color)]
        background = choices[int(rng.integers(len(choices)))]
    if background_texture is None:
        background_texture = _weighted(rng, list(BACKGROUND_TEXTURES), TEXTURE_WEIGHTS)
    count = 1 + distractors
    if size is None:
        size = round(float(rng.uniform(0.45, 0.8)), 3) if count == 1 else round(
            float(rng.uniform(*_size_range(count))), 3)
    if rotation is None:
        rotation = round(float(rng.uniform(-30.0, 30.0)), 1)
    others = [round(float(rng.uniform(*_size_range(count))), 3) for _ in range(distractors)]
    placed = _place(rng, [*others, size])
    if position is None:
        position = placed[-1]
    objects = []
    for s, pos in zip(others, placed):
        while True:
            design = random_design(rng, avoid_colors=(background,))
            if not subject.matches(design):
                break
        objects.append(design.place(s, pos, round(float(rng.uniform(-30.0, 30.0)), 1)))
    objects.append(d.place(size, position, rotation))
    return SceneSpec(tuple(objects), background, background_texture)


def subject_images(subject: Subject, n: int, rng: np.random.Generator, size: int = 128) -> list[Image.Image]:
    """``n`` photos of ``subject`` in varied poses; the first backgrounds all differ."""
    d = subject.design
    backgrounds = [c for c in COLORS if c not in (d.color, d.pattern_color)]
    order = [backgrounds[int(i)] for i in rng.permutation(len(backgrounds))]
    images = []
    for i in range(n):
        scene = subject_in_scene(subject, rng, background=order[i % len(order)])
        images.append(render(scene, size, rng))
    return images


# --------------------------------------------------------------------------------------------
# Backbone pool
# --------------------------------------------------------------------------------------------


def record_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of backbone record ``index``: PCG64 seeded by ``SeedSequence(seed)``
    spawned at ``index``, so any record can be made alone (random access, parallel writers)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def backbone_record(index: int, seed: int, size: int = 64, exclude_subject: Subject | None = None,
                    max_objects: int = 2) -> dict[str, Any]:
    """Backbone record ``index`` of the pool for ``seed`` (see :func:`backbone_records`)."""
    rng = record_rng(seed, index)
    scene = random_scene(rng, exclude=exclude_subject.matches if exclude_subject else None,
                         max_objects=max_objects)
    text = caption(scene, rng)
    image = render(scene, size, rng)
    key = f"{index:09d}"
    return {
        "key": key,
        "image": image,
        "caption": text,
        "metadata": {
            "key": key,
            "status": "success",
            "url": f"synthetic://backbone/{seed}/{key}",
            "caption": text,
            "width": size,
            "height": size,
            "original_width": size,
            "original_height": size,
            "error_message": None,
            "attributes": scene.attributes(),
        },
    }


def backbone_records(n: int, seed: int, size: int = 64, exclude_subject: Subject | None = None,
                     *, start: int = 0, max_objects: int = 2) -> Iterator[dict[str, Any]]:
    """Yield backbone records ``start .. start+n-1`` as dicts for ``write_shards``.

    Each is ``{"key", "image", "caption", "metadata"}`` with img2dataset-like metadata plus
    ``"attributes"`` (:meth:`SceneSpec.attributes`). With ``exclude_subject`` no object shows
    the subject's design (shape + colour + pattern), while its shape, colour and pattern each
    still appear on other objects.
    """
    for index in range(start, start + n):
        yield backbone_record(index, seed, size, exclude_subject, max_objects)
