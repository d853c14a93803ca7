"""A small procedural image world: coloured, patterned shapes on plain or textured backgrounds.

The project cannot ship real photos, so its demo assets, tests and (later) its benchmarks are
drawn here, reproducibly from a seed:

* a *subject*: one distinctive object design (say a purple star with yellow dots) photographed
  in varied poses on varied backgrounds, standing in for a user's DreamBooth photos;
* a *backbone* pool: captioned scenes of random objects, standing in for the LAION-style
  pre-training data that backbone-augmented training draws from. The pool can be told never to
  show the subject's exact design while still showing each of its attributes (its shape, its
  colour, its pattern) on other objects.

Everything is data: the attribute tables (:data:`COLORS`, :data:`SHAPES`, :data:`PATTERNS`,
:data:`BACKGROUND_TEXTURES`) drive sampling, drawing and captioning, and captions are written
from a scene's attributes with a small fixed vocabulary (:data:`VOCABULARY`). Adding a colour,
shape or pattern is one table entry (see :func:`vocabulary` if you extend a table at run time).

Determinism: every random choice comes from a ``numpy.random.Generator`` the caller passes in
(or, for :func:`backbone_records`, one derived from the seed and the record index), so the same
seed gives byte-identical images and identical captions on every run and platform that has the
same numpy and Pillow.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUND_TEXTURES",
    "COLORS",
    "DEMO_SUBJECT",
    "PATTERNS",
    "SHAPES",
    "SUPERSAMPLE",
    "VOCABULARY",
    "Design",
    "ObjectSpec",
    "PatternDef",
    "SceneSpec",
    "ShapeDef",
    "Subject",
    "TextureDef",
    "backbone_record",
    "backbone_records",
    "caption",
    "random_design",
    "random_scene",
    "record_rng",
    "render",
    "subject_images",
    "subject_in_scene",
    "vocabulary",
]

# Shapes are drawn on a canvas this many times larger than the output, then box-downsampled.
SUPERSAMPLE = 4

Point = tuple[float, float]
RGB = tuple[int, int, int]
# A pattern painter: (draw, to_px, radius_px, color); see _draw_stripes.
PatternPainter = Callable[[ImageDraw.ImageDraw, Callable[[float, float], Point], float, RGB], None]

# --------------------------------------------------------------------------------------------
# Attribute tables
# --------------------------------------------------------------------------------------------

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

# --------------------------------------------------------------------------------------------
# Caption vocabulary (fixed words; attribute words come from the tables above)
# --------------------------------------------------------------------------------------------

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

# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """An object's identity, independent of pose: what makes a subject *that* subject."""

    shape: str
    color: str
    pattern: str = "plain"
    pattern_color: str = "white"

    def matches(self, obj: "ObjectSpec | Design") -> bool:
        """True when ``obj`` has this shape, colour and pattern (pattern colour ignored)."""
        return (obj.shape, obj.color, obj.pattern) == (self.shape, self.color, self.pattern)

    def place(self, size: float, position: tuple[float, float], rotation: float = 0.0) -> "ObjectSpec":
        return ObjectSpec(self.shape, self.color, self.pattern, self.pattern_color, size,
                          position, rotation)


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene.

    ``size`` is the diameter of the shape's circumscribed circle as a fraction of the image
    side; ``position`` its centre in [0, 1]² (x right, y down); ``rotation`` degrees,
    counter-clockwise.
    """

    shape: str
    color: str
    pattern: str = "plain"
    pattern_color: str = "white"
    size: float = 0.5
    position: tuple[float, float] = (0.5, 0.5)
    rotation: float = 0.0

    @property
    def design(self) -> Design:
        return Design(self.shape, self.color, self.pattern, self.pattern_color)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "pattern": self.pattern,
            "pattern_color": self.pattern_color,
            "size": self.size,
            "position": [self.position[0], self.position[1]],
            "rotation": self.rotation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ObjectSpec":
        x, y = data.get("position", (0.5, 0.5))
        return cls(data["shape"], data["color"], data.get("pattern", "plain"),
                   data.get("pattern_color", "white"), float(data.get("size", 0.5)),
                   (float(x), float(y)), float(data.get("rotation", 0.0)))


@dataclass(frozen=True)
class SceneSpec:
    """A whole image: objects drawn in order (later ones on top) over a background."""

    objects: tuple[ObjectSpec, ...]
    background: str = "white"
    background_texture: str = "plain"

    def attributes(self) -> dict[str, Any]:
        """JSON-able attributes, the ``"attributes"`` field of backbone metadata.

        ``shapes`` / ``colors`` / ``patterns`` list each value once, in order of first
        appearance; ``objects`` holds every object in full (see :meth:`from_attributes`).
        """
        def unique(values: Sequence[str]) -> list[str]:
            return list(dict.fromkeys(values))

        return {
            "count": len(self.objects),
            "shapes": unique([o.shape for o in self.objects]),
            "colors": unique([o.color for o in self.objects]),
            "patterns": unique([o.pattern for o in self.objects]),
            "background": self.background,
            "background_texture": self.background_texture,
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_attributes(cls, data: Mapping[str, Any]) -> "SceneSpec":
        """Inverse of :meth:`attributes`."""
        return cls(tuple(ObjectSpec.from_dict(o) for o in data["objects"]),
                   data.get("background", "white"), data.get("background_texture", "plain"))


@dataclass(frozen=True)
class Subject:
    """A DreamBooth subject: a fixed :class:`Design` and the class word that names its kind."""

    name: str
    class_word: str
    design: Design

    def matches(self, obj: ObjectSpec | Design) -> bool:
        """True when ``obj`` shows this subject's design (shape, colour and pattern)."""
        return self.design.matches(obj)

    def prompt(self, identifier: str = "sks") -> str:
        """The DreamBooth instance prompt, e.g. ``"a sks star"``."""
        return f"a {identifier} {self.class_word}"

    def class_prompt(self) -> str:
        """The DreamBooth class (prior) prompt, e.g. ``"a star"``."""
        return f"{_article(self.class_word)} {self.class_word}"


DEMO_SUBJECT = Subject(
    name="dotted_purple_star",
    class_word="star",
    design=Design(shape="star", color="purple", pattern="dotted", pattern_color="yellow"),
)
"""The demo subject: a purple star with yellow polka dots."""

# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


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


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


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
