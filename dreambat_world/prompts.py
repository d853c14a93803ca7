"""DreamBench-style prompts of the world, with the attributes each prompt asks for.

The prompts are data (``assets/world/prompts.json``). The file has DreamBench's layout
(``{"prompts": {"object": [...], "live": [...]}}``, templates with ``{0}`` = unique token and
``{1}`` = class noun), so :class:`dreambat.eval.prompts.DreamBenchPrompts` reads it as a
``--prompts_file``; its extra ``"expected"`` table says, per template, the kind of edit
(recontextualization, color_change, pattern_change, size_change, position_change) and the
attributes it changes. Every word is in the world's caption vocabulary (plus ``sks``).

:func:`world_prompts` turns the templates into concrete prompts for one subject, with the full
expected attributes (changed ones from the table, the rest the subject's own) that the world's
attribute classifiers check, and drops templates that would not change anything for that subject
(a green subject "on a green background", a dotted one made "dotted").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreambat.errors import ConfigError

from .data import ASSETS_DIR
from .synthetic import BACKGROUND_TEXTURES, COLORS, PATTERNS, Subject

WORLD_PROMPTS_PATH = ASSETS_DIR / "prompts.json"
KINDS = ("recontextualization", "color_change", "pattern_change", "size_change", "position_change")
_VALID: dict[str, Any] = {
    "background": set(COLORS),
    "background_texture": set(BACKGROUND_TEXTURES),
    "color": set(COLORS),
    "pattern": set(PATTERNS),
    "size": {"small", "large"},
    "position": {"top left", "top right", "bottom left", "bottom right"},
}


@dataclass(frozen=True)
class WorldPromptTemplate:
    """One template, e.g. ``"a {0} {1} on a blue background"``, its kind and what it changes."""

    template: str
    kind: str
    changes: dict[str, str]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Prompt {self.template!r}: kind {self.kind!r} is not one of {KINDS}.")
        for key, value in self.changes.items():
            if key not in _VALID or value not in _VALID[key]:
                raise ConfigError(f"Prompt {self.template!r}: unknown change {key}={value!r}.")


@dataclass(frozen=True)
class WorldPrompt:
    """A concrete prompt for one subject.

    ``prompt`` generates the image (``"a sks star on a blue background"``); ``clip_prompt`` is
    the same without the token (what CLIP-T scores, as in DreamBench); ``expected`` holds the
    attributes the image should show: ``shape``, ``color``, ``pattern`` always, plus any of
    ``background``, ``background_texture``, ``size``, ``position`` the prompt names.
    """

    subject: str
    template: str
    kind: str
    prompt: str
    clip_prompt: str
    expected: dict[str, str]


def load_templates(path: str | Path | None = None) -> list[WorldPromptTemplate]:
    """Read the templates of a world prompt file (default: the bundled one)."""
    path = Path(path) if path is not None else WORLD_PROMPTS_PATH
    try:
        data = json.loads(Path(path).read_text())
        templates = data["prompts"]["object"]
        expected = data["expected"]
        return [WorldPromptTemplate(t, expected[t]["kind"], dict(expected[t]["changes"]))
                for t in templates]
    except FileNotFoundError:
        raise ConfigError(f"World prompt file '{path}' does not exist; restore assets/world/prompts.json.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"World prompt file '{path}' is malformed ({exc!r}); it needs "
                          "'prompts.object' templates and an 'expected' entry for each.") from None


def _changes_nothing(template: WorldPromptTemplate, subject: Subject) -> bool:
    d = subject.design
    c = template.changes
    return (c.get("color") == d.color or c.get("pattern") == d.pattern
            or c.get("background") in (d.color, d.pattern_color))


def world_prompts(subject: Subject, token: str = "sks", path: str | Path | None = None,
                  *, keep_all: bool = False) -> list[WorldPrompt]:
    """Concrete prompts for ``subject`` with their expected attributes (see :class:`WorldPrompt`).

    Templates that would not change anything for this subject (or whose background matches one
    of its colours) are dropped unless ``keep_all``.
    """
    out = []
    d = subject.design
    for t in load_templates(path):
        if not keep_all and _changes_nothing(t, subject):
            continue
        expected = {"shape": d.shape, "color": d.color, "pattern": d.pattern, **t.changes}
        out.append(WorldPrompt(
            subject=subject.name, template=t.template, kind=t.kind,
            prompt=" ".join(t.template.format(token, subject.class_word).split()),
            clip_prompt=" ".join(t.template.format("", subject.class_word).split()),
            expected=expected))
    return out
