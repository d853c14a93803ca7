"""Dataclass fields that carry their command-line help, for ``HfArgumentParser``."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import field
from typing import Any

from .errors import ConfigError


def flag(text: str, *, choices: Collection[str] | None = None, **kwargs: Any) -> Any:
    """A dataclass ``field`` whose ``--help`` text is ``text`` (``default=...`` etc. pass through).

    ``choices``: the values the command line accepts, from the registry that defines them (it may
    be a live view, such as a registry dict's ``keys()``, so later registrations are accepted too).
    """
    metadata: dict[str, Any] = {"help": text}
    if choices is not None:
        metadata["choices"] = choices
    return field(metadata=metadata, **kwargs)


def build_groups(groups: Sequence[type], values: Mapping[str, Any]) -> list[Any]:
    """Instantiate each dataclass of ``groups`` from the entries of ``values`` that name its fields.

    The Python counterpart of parsing a command line into several groups: ``values`` is one flat
    mapping of flag names, as a user would type them.

    Raises:
        ConfigError: a name belongs to no group (or any group's own validation fails).
    """
    known = {f.name for group in groups for f in dataclasses.fields(group)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown setting(s) {', '.join(unknown)}; see --help for the flag names.")
    return [
        group(**{f.name: values[f.name] for f in dataclasses.fields(group) if f.name in values})
        for group in groups
    ]
