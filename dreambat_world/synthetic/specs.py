"""Spec dataclasses of the synthetic world: an object's design, a placed object, a scene, a subject."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _article(word: str) -> str:
    """The indefinite article of ``word`` (also used by :mod:`.captions`)."""
    return "an" if word[:1] in "aeiou" else "a"


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
