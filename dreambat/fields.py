"""Dataclass fields that carry their command-line help, for ``HfArgumentParser``."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from .errors import ConfigError

# Keywords of ``flag`` that go to ``argparse.add_argument`` (``HfArgumentParser`` passes field
# metadata through) rather than to ``dataclasses.field``.
ARGPARSE_KEYS = ("choices", "metavar", "action")


def flag(text: str, **kwargs: Any) -> Any:
    """A dataclass ``field`` whose ``--help`` text is ``text``.

    ``choices``, ``metavar`` and ``action`` are handed to argparse; everything else (``default=``,
    ``default_factory=``, ...) to :func:`dataclasses.field`. ``choices`` should come from the registry
    that defines the names; it may be a live view (a registry dict's ``keys()``), so that names
    registered later are accepted too.
    """
    metadata = {"help": text, **{key: kwargs.pop(key) for key in ARGPARSE_KEYS if key in kwargs}}
    return field(metadata=metadata, **kwargs)


class AppendEach(argparse.Action):
    """argparse's ``action="append"`` for a ``list[str]`` setting: ``--flag A --flag B`` is ``[A, B]``.

    ``HfArgumentParser`` gives every list field ``nargs="+"``, under which a repeated flag keeps
    only its last values (``--lora_dir A --lora_dir B`` would be ``[B]``). This action takes
    exactly one value per flag, whatever ``nargs`` it is offered, and appends it: each value stays
    one token (a folder, a prompt), ``--flag A B`` is refused, and the default list is never changed.
    """

    def __init__(self, option_strings, dest, nargs=None, **kwargs):
        del nargs  # one value per flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def repeated(text: str, *, required: bool = False, **kwargs: Any) -> Any:
    """A ``list[str]`` field given once per value, ``--flag A --flag B`` (see :class:`AppendEach`).

    Empty by default; ``required=True`` makes the flag mandatory (at least one value).
    """
    if not required:
        kwargs["default_factory"] = list
    return flag(text, action=AppendEach, **kwargs)


def build_groups(groups: Sequence[type], values: Mapping[str, Any]) -> list[Any]:
    """Instantiate each dataclass of ``groups`` from the entries of ``values`` that name its fields.

    The Python counterpart of parsing a command line into several groups: ``values`` is one flat
    mapping of flag names, as a user would type them. Fields with ``init=False`` (values a group
    derives from its flags) are not settings.

    Raises:
        ConfigError: a name belongs to no group (or any group's own validation fails).
    """
    settings = [(group, [f.name for f in dataclasses.fields(group) if f.init]) for group in groups]
    known = {name for _, names in settings for name in names}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown setting(s) {', '.join(unknown)}; see --help for the flag names.")
    return [group(**{name: values[name] for name in names if name in values}) for group, names in settings]
