"""Files a run writes whole: written beside their place, synced, then renamed over it.

A reader (a rerun, a user, a second process) sees the old file or the new one, never a half-written
one, however the writer stops.
"""

from __future__ import annotations

import os
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform; the data itself is already synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then ``os.replace`` it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_image_atomically(image, path: Path, **options) -> None:
    """Save a PIL ``image`` under a temporary name beside ``path`` and rename it into place, so a
    stopped run never leaves a half-written image that a rerun would count as done. ``options``
    go to ``Image.save`` (the format follows ``path``'s suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format=image_format(path), **options)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def image_format(path: Path) -> str:
    """PIL's format name for ``path``'s suffix (``.jpg`` -> ``JPEG``)."""
    from PIL import Image

    Image.init()
    suffix = path.suffix.lower()
    if suffix not in Image.EXTENSION:
        raise ValueError(f"No image format for '{path.name}'; use a .png or .jpg name.")
    return Image.EXTENSION[suffix]
