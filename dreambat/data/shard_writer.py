"""Write img2dataset-format webdataset shards (for tests, demos and small local pools).

A shard is a tar holding, per sample, ``{key}.jpg`` (or ``.png`` / ``.webp``), ``{key}.txt``
(caption) and ``{key}.json`` (metadata), members sorted by key as img2dataset writes them.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dreambat.constants import SHARD_CAPTION_KEY, SHARD_METADATA_KEY
from dreambat.errors import ConfigError, DataError

# img2dataset's encode_format names -> (member extension, PIL format name).
_IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "jpg": ("jpg", "JPEG"),
    "jpeg": ("jpg", "JPEG"),
    "png": ("png", "PNG"),
    "webp": ("webp", "WEBP"),
}


@dataclass(frozen=True)
class ShardRecord:
    """One sample to write.

    ``image`` bytes are written as-is (tests plant corrupt images this way); a PIL image is
    encoded in the writer's ``image_format``. ``caption=None`` writes no ``.txt`` member.
    ``metadata=None`` writes img2dataset-like defaults (key, status, width, height, caption);
    ``metadata`` bytes are written as-is (to plant unparsable JSON).
    """

    key: str
    image: Image.Image | bytes
    caption: str | None = None
    metadata: Mapping[str, Any] | bytes | None = None


def write_shards(
    samples: Iterable[ShardRecord | Mapping[str, Any]],
    pattern: str | Path,
    *,
    max_per_shard: int = 1000,
    image_format: str = "jpg",
    quality: int = 90,
) -> list[Path]:
    """Write ``samples`` into tar shards and return the shard paths in order.

    Args:
        samples: ``ShardRecord`` objects or dicts with the same fields.
        pattern: a path with a ``str.format`` slot for the shard index
            (``"out/shard-{:05d}.tar"``), or a plain ``.tar`` path when all samples fit one shard.
        max_per_shard: samples per shard (img2dataset's ``number_sample_per_shard``).
        image_format: ``"jpg"``, ``"png"`` or ``"webp"``; used for PIL images only.
        quality: JPEG / WebP quality.

    No samples at all still writes one valid, empty shard. Each shard is written to a temporary
    file in the target folder and renamed into place, so a reader never sees half a shard.
    """
    if max_per_shard < 1:
        raise ConfigError(f"max_per_shard must be >= 1, got {max_per_shard}.")
    if image_format.lower() not in _IMAGE_FORMATS:
        raise ConfigError(
            f"Unsupported image_format {image_format!r}; use one of {sorted(_IMAGE_FORMATS)}."
        )
    ext, pil_format = _IMAGE_FORMATS[image_format.lower()]
    pattern = str(pattern)
    templated = "{" in pattern

    written: list[Path] = []
    buffer: list[tuple[str, dict[str, bytes]]] = []
    seen_keys: set[str] = set()

    def flush() -> None:
        path = Path(pattern.format(len(written)) if templated else pattern)
        _write_tar_atomic(path, sorted(buffer, key=lambda item: item[0]))
        written.append(path)
        buffer.clear()

    for raw in samples:
        record = raw if isinstance(raw, ShardRecord) else ShardRecord(**raw)
        _check_key(record.key, seen_keys)
        seen_keys.add(record.key)
        buffer.append((record.key, _encode_record(record, ext, pil_format, quality)))
        if len(buffer) > max_per_shard and not templated:
            raise ConfigError(
                f"More than {max_per_shard} samples do not fit one shard at {pattern!r}; use a"
                " pattern with an index slot such as 'shard-{:05d}.tar' or raise max_per_shard."
            )
        if len(buffer) >= max_per_shard and templated:
            flush()
    if buffer or not written:
        flush()
    return written


def _check_key(key: str, seen: set[str]) -> None:
    # webdataset splits member names at the first dot of the basename, so a dotted key
    # would be read back as a different sample.
    if not key or "." in key or key.startswith("/"):
        raise DataError(f"Invalid shard key {key!r}: use a non-empty name without dots.")
    if key in seen:
        raise DataError(f"Duplicate shard key {key!r}: every sample needs a unique key.")


def _encode_record(record: ShardRecord, ext: str, pil_format: str, quality: int) -> dict[str, bytes]:
    """Return ``{member extension: bytes}`` for one record."""
    members: dict[str, bytes] = {}
    if isinstance(record.image, bytes):
        members[ext_from_bytes(record.image, ext)] = record.image
        size = _size_of_bytes(record.image)
    else:
        members[ext] = encode_image(record.image, pil_format, quality)
        size = record.image.size
    if record.caption is not None:
        members[SHARD_CAPTION_KEY] = record.caption.encode("utf-8")
    if isinstance(record.metadata, bytes):
        members[SHARD_METADATA_KEY] = record.metadata
    else:
        metadata = dict(record.metadata) if record.metadata is not None else {
            "key": record.key,
            "status": "success",
            "width": size[0] if size else None,
            "height": size[1] if size else None,
            "caption": record.caption,
        }
        members[SHARD_METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode("utf-8")
    return members


def encode_image(image: Image.Image, pil_format: str = "JPEG", quality: int = 90) -> bytes:
    """Encode a PIL image to bytes; JPEG gets an RGB copy since it stores no alpha."""
    if pil_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    if pil_format in ("JPEG", "WEBP"):
        image.save(out, format=pil_format, quality=quality)
    else:
        image.save(out, format=pil_format)
    return out.getvalue()


def ext_from_bytes(data: bytes, default: str) -> str:
    """Member extension for raw image bytes, sniffed from magic numbers, else ``default``."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    return default


def _size_of_bytes(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # corrupt bytes are planted on purpose; metadata just lacks a size
        return None


def _write_tar_atomic(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w") as tar:
                for key, members in samples:
                    for ext in sorted(members):
                        data = members[ext]
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        info.mode = 0o644
                        tar.addfile(info, io.BytesIO(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
