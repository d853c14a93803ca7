"""Errors of the influence core, in the core's own terms.

The core knows no command line. Its errors carry structured fields (which rule or strategy,
which setting, which value, what was expected) and a message in library words; the application
rewords them with its flag names (see :func:`dreambat.scoring.config.worded`).
"""

from __future__ import annotations

from typing import Any, Literal

from ..errors import ConfigError

SettingProblem = Literal["invalid", "unknown", "unexpected", "missing", "conflict"]


class SettingError(ConfigError):
    """A setting of a core object (a selection rule, a curvature strategy) that cannot be used.

    Attributes:
        owner: what was being built, e.g. ``"selection rule 'clip'"`` or ``"curvature"``.
        setting: the core's name of the setting (``"num_samples"``, ``"fraction"``, ``"damping"``);
            for ``conflict`` several names joined by ``", "``.
        value: the value given (``None`` for ``missing``).
        problem: ``invalid`` (out of range), ``unknown`` (no such name), ``unexpected`` (the owner
            does not take this setting), ``missing`` (a required setting was not given) or
            ``conflict`` (settings that exclude each other were given together).
        expected: what would have been accepted, in words (``"an integer >= 1"``), or the names
            accepted, for ``unknown``/``unexpected``/``missing``/``conflict``.
    """

    def __init__(self, owner: str, setting: str, value: Any, problem: SettingProblem, expected: str) -> None:
        self.owner, self.setting, self.value, self.problem, self.expected = owner, setting, value, problem, expected
        super().__init__(self._message())

    def _message(self) -> str:
        if self.problem == "invalid":
            return f"{self.owner}: {self.setting} must be {self.expected}, got {self.value!r}."
        if self.problem == "unknown":
            return f"Unknown {self.owner} {self.value!r}; choose one of: {self.expected}."
        if self.problem == "unexpected":
            return f"{self.owner} does not take {self.setting}; it takes {self.expected or 'no setting'}."
        if self.problem == "missing":
            return f"{self.owner} needs one of: {self.expected}."
        return f"{self.owner} takes at most one of: {self.expected} (got {self.setting})."
