"""Typed exceptions. Every message says what went wrong *and* what the user should do."""

from __future__ import annotations


class DreambatError(Exception):
    """Base class of all errors dreambat raises on purpose."""


class ConfigError(DreambatError, ValueError):
    """An invalid flag or flag combination, found before any model is loaded."""


class DataError(DreambatError):
    """Input data (subject folder, shards) is missing, empty or unusable."""


class SubjectDataError(DataError):
    """The subject (instance) image folder is missing, empty or holds no readable image."""


class ShardNotFoundError(DataError, FileNotFoundError):
    """One or more backbone shards named by the user do not exist."""


class ModelNotFoundError(DreambatError, FileNotFoundError):
    """A model path or hub id cannot be resolved without the network."""
