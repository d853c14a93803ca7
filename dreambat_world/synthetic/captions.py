"""Captions of synthetic scenes, written from their attributes with a small fixed vocabulary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .specs import ObjectSpec, SceneSpec, _article
from .tables import BACKGROUND_TEXTURES, COLORS, PATTERNS, SHAPES

# Fixed words; attribute words come from the tables.
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
SIZE_WORDS = {"small": "small", "large": "large"}
CAPTION_PREFIXES: tuple[str, ...] = ("", "a photo of", "an image of", "a picture of", "a drawing of")
CAPTION_PREFIX_WEIGHTS: tuple[float, ...] = (0.6, 0.1, 0.1, 0.1, 0.1)
BACKGROUND_PREPOSITIONS: tuple[str, ...] = ("on", "against")
POSITION_PHRASES: dict[tuple[str, str], str] = {
    ("top", "left"): "in the top left",
    ("top", "right"): "in the top right",
    ("bottom", "left"): "in the bottom left",
    ("bottom", "right"): "in the bottom right",
    ("top", ""): "at the top",
    ("bottom", ""): "at the bottom",
    ("", "left"): "on the left",
    ("", "right"): "on the right",
    ("", ""): "in the center",
}
_FIXED_WORDS = ("a", "an", "and", "with", "background")

SMALL_SIZE = 0.42  # objects (of single-object scenes) below this size fraction are "small"
LARGE_SIZE = 0.62  # ... and at or above this one "large"


def vocabulary() -> list[str]:
    """Every word :func:`caption` can write, sorted; recompute after extending a table."""
    words: set[str] = set(_FIXED_WORDS)
    words.update(COLORS)
    for shape in SHAPES.values():
        words.update((shape.name, shape.plural))
    for pattern in PATTERNS.values():
        words.add(pattern.adjective)
        if pattern.noun:
            words.add(pattern.noun)
    for texture in BACKGROUND_TEXTURES.values():
        if texture.word:
            words.add(texture.word)
    words.update(COUNT_WORDS.values())
    words.update(SIZE_WORDS.values())
    for phrase in (*CAPTION_PREFIXES, *BACKGROUND_PREPOSITIONS, *POSITION_PHRASES.values()):
        words.update(phrase.split())
    return sorted(words)


VOCABULARY: list[str] = vocabulary()
"""Every word a caption can use (lower case; captions hold no punctuation)."""


def _choice(rng: np.random.Generator | None, options: Sequence[str],
            weights: Sequence[float] | None = None) -> str:
    """``options[0]`` without an rng (the canonical phrasing), else a weighted draw."""
    if rng is None:
        return options[0]
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _chance(rng: np.random.Generator | None, p: float, default: bool) -> bool:
    return default if rng is None else bool(rng.random() < p)


def _position_phrase(position: tuple[float, float]) -> str:
    x, y = position
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else ""
    return POSITION_PHRASES[(vertical, horizontal)]


def _object_phrase(obj: ObjectSpec, count: int, rng: np.random.Generator | None,
                   describe_pose: bool) -> str:
    shape = SHAPES[obj.shape]
    pattern = PATTERNS[obj.pattern]
    adjectives: list[str] = []
    if describe_pose and count == 1:
        if obj.size < SMALL_SIZE and _chance(rng, 0.7, True):
            adjectives.append(SIZE_WORDS["small"])
        elif obj.size >= LARGE_SIZE and _chance(rng, 0.7, True):
            adjectives.append(SIZE_WORDS["large"])
    adjectives.append(obj.color)
    with_phrase = ""
    if pattern.noun is None:
        if pattern.adjective != "plain" or _chance(rng, 0.1, False):
            adjectives.append(pattern.adjective)
    elif _chance(rng, 0.3, False):
        with_phrase = f"with {obj.pattern_color} {pattern.noun}"
    else:
        adjectives.append(pattern.adjective)
    noun = shape.name if count == 1 else shape.plural
    lead = _article(adjectives[0]) if count == 1 else COUNT_WORDS[count]
    words = [lead, *adjectives, noun]
    if with_phrase:
        words.append(with_phrase)
    if describe_pose and count == 1:
        where = _position_phrase(obj.position)
        if _chance(rng, 0.15 if where == POSITION_PHRASES[("", "")] else 0.5,
                   where != POSITION_PHRASES[("", "")]):
            words.append(where)
    return " ".join(words)


def caption(scene: SceneSpec, rng: np.random.Generator | None = None) -> str:
    """Describe ``scene`` in simple English using only :data:`VOCABULARY`.

    Without ``rng`` the phrasing is canonical (every notable attribute, patterns as adjectives):
    ``"a small yellow dotted heart in the top left on a gray background"``. With ``rng`` the
    phrasing varies a little (a prefix such as "a photo of", "with yellow dots", size, position
    and texture sometimes left out), deterministically for a given generator state.
    Identical objects are counted: ``"two green circles on a white background"``.
    """
    prefix = _choice(rng, CAPTION_PREFIXES, CAPTION_PREFIX_WEIGHTS)
    groups: dict[tuple[str, str, str, str], list[ObjectSpec]] = {}
    for obj in scene.objects:
        groups.setdefault((obj.shape, obj.color, obj.pattern, obj.pattern_color), []).append(obj)
    single = len(scene.objects) == 1
    phrases = [_object_phrase(objs[0], len(objs), rng, describe_pose=single)
               for objs in groups.values()]

    texture = BACKGROUND_TEXTURES[scene.background_texture]
    bg_words = [scene.background]
    if texture.word and _chance(rng, 0.5, True):
        if texture.word_before_color:
            bg_words.insert(0, texture.word)
        else:
            bg_words.append(texture.word)
    preposition = _choice(rng, BACKGROUND_PREPOSITIONS, (0.8, 0.2))
    background = f"{preposition} {_article(bg_words[0])} {' '.join(bg_words)} background"

    lead = [prefix] if prefix else []
    if not phrases:  # an empty scene: "a blue background"
        return " ".join([*lead, _article(bg_words[0]), *bg_words, "background"])
    return " ".join([*lead, " and ".join(phrases), background])
