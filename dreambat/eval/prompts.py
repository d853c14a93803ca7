"""DreamBench prompt templates, shipped as data in ``assets/dreambench/prompts.json``.

Each template has two placeholders: ``{0}`` the unique token (``sks``) and ``{1}`` the class noun
(``dog``). Objects and live subjects (cats, dogs) get different sets of 25 templates; the first
ten and the last five are shared. Images are generated from ``template.format(token, noun)``;
CLIP-T scores them against the same template with the token removed (``"a dog in the jungle"``),
as DreamBench does, because CLIP does not know the token.

PRES and DIV (DreamBooth's prior preservation and diversity) use two more prompts per subject:
the class prompt, a ``{}`` template with the class noun only (``"a photo of a dog"``, see
:func:`class_prompt`), and the subject prompt :data:`SUBJECT_PROMPT_TEMPLATE` (``"a photo of sks dog"``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

DREAMBENCH_PROMPTS_PATH = Path(__file__).resolve().parents[2] / "assets" / "dreambench" / "prompts.json"
PROMPT_SETS = ("object", "live")
SUBJECT_PROMPT_TEMPLATE = "a photo of {0} {1}"
"""DIV's prompt: the generic instance prompt, ``{0}`` the unique token and ``{1}`` the class noun."""
_ONE_SLOT = re.compile(r"[^{}]*\{\}[^{}]*")


def generation_prompt(template: str, unique_token: str, class_noun: str) -> str:
    """The prompt images are generated from, e.g. ``"a sks dog in the jungle"``."""
    return " ".join(template.format(unique_token, class_noun).split())


def check_class_template(template: str) -> str:
    """A class-prompt template: exactly one ``{}`` (the class noun) and no other braces."""
    if not _ONE_SLOT.fullmatch(template or ""):
        raise ConfigError(
            f"--class_prompt_template {template!r} must hold '{{}}' once, for the class noun, and no other "
            "braces, e.g. 'a photo of a {}'."
        )
    return template


def class_prompt(template: str, class_noun: str) -> str:
    """The class prompt of PRES, e.g. ``"a photo of a dog"`` (no unique token)."""
    return " ".join(template.format(class_noun).split())


def clip_t_prompt(template: str, class_noun: str) -> str:
    """The prompt CLIP-T is measured against: the unique token dropped, e.g. ``"a dog in the jungle"``."""
    return " ".join(template.format("", class_noun).split())


@dataclass(frozen=True)
class DreamBenchPrompts:
    """The templates per prompt set, the classes counted as live, and DreamBench's subject table.

    ``subjects`` maps a DreamBench subject folder name (``dog2``) to ``(class_noun, live)``.
    """

    object: tuple[str, ...]
    live: tuple[str, ...]
    live_classes: frozenset[str] = frozenset({"cat", "dog"})
    subjects: dict[str, tuple[str, bool]] = field(default_factory=dict)
    source: Path | None = None

    def __post_init__(self):
        for name in PROMPT_SETS:
            templates = getattr(self, name)
            if not templates:
                raise ConfigError(f"Prompt file {self.source}: the '{name}' prompt set is empty.")
            for template in templates:
                if "{1}" not in template or re.search(r"\{(?![01]\})", template):
                    raise ConfigError(
                        f"Prompt file {self.source}: template {template!r} must contain {{1}} (the "
                        "class noun) and may contain {0} (the unique token); no other braces."
                    )

    @classmethod
    def load(cls, path: str | Path | None = None) -> DreamBenchPrompts:
        """Read a prompt file (default: the bundled DreamBench one).

        The file is JSON: ``{"prompts": {"object": [...], "live": [...]}, "live_classes": [...],
        "subjects": {"dog2": {"class": "dog", "live": true}, ...}}``; only ``prompts`` is required.
        """
        path = Path(path) if path is not None else DREAMBENCH_PROMPTS_PATH
        try:
            data = json.loads(path.read_text())
            prompts = data["prompts"]
            return cls(
                object=tuple(prompts["object"]),
                live=tuple(prompts["live"]),
                live_classes=frozenset(data.get("live_classes", ("cat", "dog"))),
                subjects={name: (entry["class"], bool(entry["live"]))
                          for name, entry in data.get("subjects", {}).items()},
                source=path,
            )
        except FileNotFoundError:
            raise ConfigError(f"Prompt file '{path}' does not exist; check --prompts_file.") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"Prompt file '{path}' is not a DreamBench prompt file ({type(exc).__name__}: {exc}); it "
                "needs {\"prompts\": {\"object\": [...], \"live\": [...]}} with '{0} {1}' templates."
            ) from None

    def templates(self, live: bool, limit: int | None = None) -> tuple[str, ...]:
        """The live-subject or object templates, the first ``limit`` of them if given."""
        templates = self.live if live else self.object
        return templates[:limit] if limit is not None else templates

    def is_live(self, class_noun: str) -> bool:
        """Whether a class noun gets the live-subject prompts (its last word is a live class)."""
        words = class_noun.lower().split()
        return bool(words) and words[-1] in self.live_classes
