"""Parsing flags into setting groups: one parser for every command (train, score, eval, grid).

Each group is a dataclass whose fields carry their help (:func:`dreambat.fields.flag`) and check
themselves in ``__post_init__``; :func:`parse_config` parses a command line once into validated
groups, and nothing below the entry points sees an argparse namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import DreambatError
from .fields import build_groups


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of setting groups: description and examples as written, each flag's default after
    its help; not for required flags (none), nor where the help says it in words ``(default: ...)``."""

    def _get_help_string(self, action):
        if action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def config_parser(groups: Sequence[type], prog: str | None, description: str, *, epilog: str | None = None,
                  defaults: Mapping[str, Any] | None = None):
    """The ``HfArgumentParser`` of ``groups``: one flag per field, its help and default in ``--help``.

    ``defaults`` overrides field defaults for this command only (``dreambat grid`` samples with
    fewer steps than a DreamBench run); ``--help`` shows the overridden values.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(groups, prog=prog, description=description, epilog=epilog,
                              formatter_class=HelpFormatter)
    if defaults:
        fields = {f.name for group in groups for f in dataclasses.fields(group) if f.init}
        unknown = sorted(set(defaults) - fields)
        if unknown:
            raise ValueError(f"defaults {unknown} name no field of {[group.__name__ for group in groups]}")
        parser.set_defaults(**defaults)
    return parser


def parse_groups(parser, argv: Sequence[str] | None) -> list:
    """One validated instance per group of ``parser`` (from :func:`config_parser`).

    An unknown flag or a value of the wrong type or choice exits 2 with argparse's message.

    Raises:
        DreambatError: a group's own validation refused a value.
    """
    namespace = parser.parse_args(list(argv) if argv is not None else None)
    return build_groups(parser.dataclass_types, vars(namespace))


def parse_config(groups: tuple[type, ...], argv: Sequence[str] | None, prog: str | None, description: str,
                 bundle=None, *, epilog: str | None = None, defaults: Mapping[str, Any] | None = None):
    """Parse flags once into validated setting groups (argparse-style exit 2 on bad input).

    ``groups`` are dataclasses parsed side by side by ``HfArgumentParser``; with ``bundle`` the
    parsed groups are passed to it (e.g. :class:`~dreambat.bat.config.BatSettings`, which also
    refuses contradicting combinations) and its result is returned, else the tuple of groups.
    ``epilog`` and ``defaults``: see :func:`config_parser`.
    """
    parser = config_parser(groups, prog, description, epilog=epilog, defaults=defaults)
    try:
        configs = parse_groups(parser, argv)
        return bundle(*configs) if bundle is not None else tuple(configs)
    except DreambatError as exc:
        parser.error(str(exc))
