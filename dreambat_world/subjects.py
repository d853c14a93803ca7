"""The world's held-out DreamBooth subjects and their photos.

A subject is a fixed :class:`~dreambat_world.synthetic.Design` (shape + colour + pattern) whose class
word is its shape noun. The backbone pool never shows any subject's design (see
:func:`matches_any_subject`), while every shape, colour and pattern of the subjects still appears
on other objects: like a user's dog that the backbone has never seen, among many other dogs.

Photos are deterministic: :func:`subject_photos` derives its generator from the subject's name
and the split, so the same call gives byte-identical images everywhere (same numpy / Pillow).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from PIL import Image

from dreambat.errors import ConfigError

from .synthetic import (
    BACKGROUND_TEXTURES,
    COLORS,
    DEMO_SUBJECT,
    Design,
    ObjectSpec,
    SceneSpec,
    Subject,
    render,
    subject_in_scene,
)

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")
N_PHOTOS: dict[str, int] = {"train": 5, "heldout": 8}
"""Photos per split: 5 DreamBooth training photos, 8 held-out reference photos."""
PHOTO_SIZE = 32
"""Default photo side in pixels: the world backbone's native resolution."""


def _subject(shape: str, color: str, pattern: str, pattern_color: str) -> Subject:
    return Subject(f"{pattern}_{color}_{shape}", shape, Design(shape, color, pattern, pattern_color))


WORLD_SUBJECTS: tuple[Subject, ...] = (
    DEMO_SUBJECT,  # dotted_purple_star: a purple star with yellow dots
    _subject("circle", "red", "striped", "white"),
    _subject("square", "blue", "checkered", "yellow"),
    _subject("heart", "green", "dotted", "pink"),
    _subject("triangle", "orange", "striped", "black"),
    _subject("hexagon", "pink", "checkered", "blue"),
    _subject("cross", "yellow", "dotted", "red"),
    _subject("diamond", "brown", "striped", "yellow"),
    _subject("star", "green", "checkered", "white"),
    _subject("heart", "purple", "striped", "orange"),
    _subject("circle", "black", "dotted", "white"),
    _subject("diamond", "red", "checkered", "black"),
    _subject("square", "orange", "dotted", "blue"),
    _subject("triangle", "yellow", "checkered", "purple"),
)
"""The 14 held-out subjects; the first is :data:`~dreambat_world.synthetic.DEMO_SUBJECT`.

Every design is patterned (a pattern makes a design specific, as a plush toy is specific among
toys) and no two share shape + colour + pattern; each shape is used by one or two subjects.
"""

WORLD_DEMO_SUBJECT: Subject = DEMO_SUBJECT


def subject_by_name(name: str) -> Subject:
    """Look a subject up by its name (e.g. ``"dotted_purple_star"``)."""
    for subject in WORLD_SUBJECTS:
        if subject.name == name:
            return subject
    raise ConfigError(
        f"Unknown world subject {name!r}; choose one of {[s.name for s in WORLD_SUBJECTS]}."
    )


def matches_any_subject(obj: ObjectSpec | Design) -> bool:
    """True when ``obj`` shows the design (shape, colour, pattern) of any world subject.

    Pass it as ``exclude`` to :func:`dreambat_world.synthetic.random_scene` to keep subjects out of
    the backbone pool.
    """
    return any(subject.matches(obj) for subject in WORLD_SUBJECTS)


def excludes_all_subjects(scene: SceneSpec | Mapping[str, Any]) -> bool:
    """True when no object of ``scene`` (a :class:`SceneSpec` or its ``attributes()`` dict, the
    ``"attributes"`` field of backbone metadata) shows a world subject's design."""
    if not isinstance(scene, SceneSpec):
        scene = SceneSpec.from_attributes(scene)
    return not any(matches_any_subject(obj) for obj in scene.objects)


def photo_rng(subject: Subject, split: str) -> np.random.Generator:
    """The generator of ``subject``'s ``split`` photos, from a CRC of the name and split."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown photo split {split!r}; use one of {SPLITS}.")
    key = zlib.crc32(f"world-subject/{subject.name}/{split}".encode())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def subject_scenes(subject: Subject, split: str = "train", n: int | None = None) -> list[SceneSpec]:
    """The scenes of ``subject``'s ``split`` photos (``n`` defaults to :data:`N_PHOTOS`).

    Poses vary on purpose: backgrounds all differ (never the subject's colours) until they run
    out, sizes are spread evenly over [0.5, 0.85] of the image side in shuffled order, textures
    and rotations are random, and the last held-out photo has one smaller distractor object.
    """
    rng = photo_rng(subject, split)
    n = N_PHOTOS[split] if n is None else n
    d = subject.design
    backgrounds = [c for c in COLORS if c not in (d.color, d.pattern_color)]
    order = [backgrounds[int(i)] for i in rng.permutation(len(backgrounds))]
    textures = list(BACKGROUND_TEXTURES)
    sizes = np.linspace(0.5, 0.85, max(n, 1))[rng.permutation(max(n, 1))]
    scenes = []
    for i in range(n):
        distractors = 1 if split == "heldout" and i == n - 1 else 0
        texture = "plain" if i % 2 == 0 else textures[int(rng.integers(len(textures)))]
        size = round(float(sizes[i]), 3) if not distractors else None
        scenes.append(subject_in_scene(subject, rng, background=order[i % len(order)],
                                       background_texture=texture, size=size,
                                       distractors=distractors))
    return scenes


def subject_photos(subject: Subject, split: Split = "train", size: int = PHOTO_SIZE,
                   n: int | None = None) -> list[Image.Image]:
    """Deterministic photos of ``subject``: 5 ``"train"`` or 8 ``"heldout"`` RGB images.

    Returns:
        ``n`` PIL images of ``size`` x ``size`` pixels; the two splits are different renders
        (other backgrounds, poses and sizes) of the same design.
    """
    rng = photo_rng(subject, split)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(rng.integers(2**31)))))
    return [render(scene, size, rng) for scene in subject_scenes(subject, split, n)]
