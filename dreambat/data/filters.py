"""Filters on the JSON metadata of img2dataset samples, e.g. ``width>=256``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from dreambat.errors import ConfigError

_FILTER_RE = re.compile(r"^\s*([^\s=!<>]+)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*$")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class MetadataFilter:
    """Keep a sample when ``metadata[field] <op> value``, e.g. ``width>=256`` or ``status==success``.

    Compares as numbers when both sides are numeric, else as strings (JSON spelling for
    true/false). A missing or null field fails the filter.
    """

    field: str
    op: str
    value: str | float

    @classmethod
    def parse(cls, text: str) -> MetadataFilter:
        """Parse ``"<field><op><value>"`` with op one of ``== != >= <= > <``."""
        match = _FILTER_RE.match(text)
        if not match:
            raise ConfigError(
                f"Cannot parse metadata filter {text!r}; write '<field><op><value>' with op one of"
                " ==, !=, >=, <=, >, <, e.g. 'width>=256' or 'status==success'."
            )
        name, op, raw = match.groups()
        number = _as_number(raw) if raw else None
        if op in ("==", "!="):
            return cls(name, op, number if number is not None else raw.strip("'\""))
        if number is None:
            raise ConfigError(
                f"Metadata filter {text!r} compares with {op} against {raw!r}, which is not a number;"
                " use == or != for text values."
            )
        return cls(name, op, number)

    def __call__(self, metadata: dict[str, Any]) -> bool:
        actual = metadata.get(self.field)
        if actual is None:
            return False
        actual_number, wanted_number = _as_number(actual), _as_number(self.value)
        if actual_number is not None and wanted_number is not None:
            left, right = actual_number, wanted_number
        elif self.op in ("==", "!="):
            left = json.dumps(actual) if isinstance(actual, bool) else str(actual)
            right = str(self.value)
        else:
            return False
        return {
            "==": left == right, "!=": left != right, ">=": left >= right,
            "<=": left <= right, ">": left > right, "<": left < right,
        }[self.op]
