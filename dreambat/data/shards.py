"""Stream backbone candidates (image, caption, metadata) from img2dataset webdataset shards.

Shards are read in the order given, members grouped into samples by key as webdataset does.
Bad samples are counted in ``ShardStats`` and skipped; nothing ever sleeps or retries.
Local paths, ``file://`` URLs and ``pipe:`` commands are opened with ``webdataset.gopen``.
What a run checks before it reads (garbage refused, empty shards skipped, img2dataset's stats) is
in :mod:`dreambat.data.shard_probe`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand
from PIL import Image, ImageOps
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from dreambat.constants import SHARD_CAPTION_KEY, SHARD_IMAGE_KEYS, SHARD_METADATA_KEY
from dreambat.errors import ConfigError, ShardNotFoundError

from .filters import MetadataFilter

_SPLIT_MODES = ("sample", "shard")
# A web image this small is a thumbnail or a tracking pixel: upscaled to the training resolution it
# is noise with a caption, and its gradient dwarfs every real image's.
DEFAULT_MIN_IMAGE_SIZE = 16
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's reserved member names


@dataclass(frozen=True)
class BackboneSample:
    """One backbone candidate: RGB image (EXIF orientation applied), caption, metadata, shard url."""

    key: str
    image: Image.Image
    caption: str
    metadata: dict[str, Any]
    url: str
    index: int = -1
    """Position among all candidates in stream order (with ``split_by="sample"``, the same for
    every world size), so per-process results merge back into single-process order."""


@dataclass
class ShardStats:
    """Counts of one pass of a ``ShardReader`` on this rank (summing over ranks gives the global pass)."""

    yielded: int = 0
    skipped_corrupt_image: int = 0
    skipped_missing_image: int = 0
    skipped_missing_caption: int = 0
    skipped_bad_metadata: int = 0
    skipped_filtered: int = 0
    skipped_too_small: int = 0
    """Decoded images whose shorter side is below the reader's ``min_image_size``."""
    captions_from_json: int = 0
    """Candidates without a ``.txt`` caption whose caption came from their json's ``"caption"``."""
    captions_repaired: int = 0
    """Captions with bytes that are not UTF-8, read with those bytes replaced by U+FFFD."""
    not_sampled: int = 0
    shards_read: int = 0
    truncated_shards: int = 0
    unreadable_shards: int = 0
    lost_to_truncation: int = 0
    """Samples dropped because their shard ended (truncated) or failed (unreadable) while they were read."""

    @property
    def skipped(self) -> int:
        """Samples skipped for any reason."""
        return sum(value for name, value in asdict(self).items() if name.startswith("skipped_"))

    def as_dict(self) -> dict[str, int]:
        """All counts plus ``skipped`` and ``candidates_read`` (= yielded + skipped), for reports."""
        return {**asdict(self), "skipped": self.skipped, "candidates_read": self.yielded + self.skipped}

    def summary(self) -> str:
        """One line, e.g. ``"1000 candidates read, 3 skipped (2 corrupt image, 1 missing caption)"``."""
        reasons = [
            f"{value} {name.removeprefix('skipped_').replace('_', ' ')}"
            for name, value in asdict(self).items()
            if name.startswith("skipped_") and value
        ]
        text = f"{self.yielded + self.skipped} candidates read, {self.skipped} skipped"
        if reasons:
            text += f" ({', '.join(reasons)})"
        if self.captions_from_json:
            text += f"; {self.captions_from_json} caption(s) read from the json"
        if self.captions_repaired:
            text += f"; {self.captions_repaired} caption(s) with invalid UTF-8 bytes replaced"
        if self.not_sampled:
            text += f"; {self.not_sampled} left out by the candidate ratio"
        if self.truncated_shards:
            text += f"; {self.truncated_shards} truncated shard(s)"
            if self.lost_to_truncation:
                text += f" ({self.lost_to_truncation} sample(s) cut off)"
        if self.unreadable_shards:
            text += f"; {self.unreadable_shards} unreadable shard(s)"
        return text


def expand_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Brace-expand one URL or each URL of a list (``"shard-{00000..00009}.tar"``), keeping order."""
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    return [url for item in items for url in braceexpand.braceexpand(str(item)) if url]


def _local_path(url: str) -> str | None:
    """The filesystem path of a plain or ``file://`` URL; None for pipes and remote URLs."""
    if url.startswith("pipe:"):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "":
        return url
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def check_shards_exist(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand ``urls`` and check every local shard is an existing file; return the expanded list.

    ``pipe:`` commands and remote URLs (``http(s)://`` etc.) are not checked.
    Raises ShardNotFoundError naming every missing path, or when the expansion is empty.
    """
    expanded = expand_urls(urls)
    if not expanded:
        raise ShardNotFoundError(
            f"No backbone shards given ({urls!r} expands to nothing); pass shard paths or a brace"
            " pattern such as 'laion/{00000..00009}.tar'."
        )
    missing = [url for url in expanded if (path := _local_path(url)) and not os.path.isfile(path)]
    if missing:
        listing = "\n  ".join(missing)
        raise ShardNotFoundError(
            f"{len(missing)} of {len(expanded)} backbone shard(s) not found:\n  {listing}\n"
            "Check the paths and that the brace range (e.g. '{00000..00009}') matches the files."
        )
    return expanded


def in_sample(key: str, ratio: float) -> bool:
    """Whether ``key`` is in the ``ratio`` subsample: a uniform hash of the key below ``ratio``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < ratio


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully (truncated data raises here), apply EXIF orientation, return RGB."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # malformed EXIF must not cost a decodable image
            pass
        return image.convert("RGB")


def _iter_shard_samples(url: str, stats: ShardStats) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", ext: bytes, ...}`` per sample of one shard, counting a bad shard in ``stats``.

    On a truncated shard every sample whose members were all read in full is yielded; the one
    sample whose member data was cut is dropped and counted in ``stats.lost_to_truncation``. When
    the cut falls inside a member's header, the sample read last is yielded if it already has its
    image and caption (it may lack a ``.json`` that would have followed, as if it never had one),
    else dropped and counted. A 0-byte file
    counts as truncated (img2dataset never writes one; it is an interrupted copy). A valid tar with
    no members is just empty. A shard that cannot be opened, an I/O error, or a ``pipe:`` command
    exiting non-zero counts as unreadable (its pending sample dropped and counted likewise).
    """
    try:
        stream = gopen(url, "rb")
    except OSError:
        stats.unreadable_shards += 1
        return
    stats.shards_read += 1
    outcome, current, reading = "complete", None, None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                prefix, suffix = base_plus_ext(info.name)
                if not info.isreg() or prefix is None or _SKIP_META.match(info.name):
                    continue
                reading = prefix
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise EOFError(f"member {info.name} cut short")
                reading = None
                tar.members = []  # stream mode keeps every TarInfo otherwise
                if current is None or prefix != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": prefix}
                current.setdefault(suffix.lower(), data)
            # A clean archive ends with a zero block read at tar.offset; less means cut data.
            if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
                outcome = "truncated"
    except (tarfile.TarError, EOFError):
        outcome = "truncated"
    except OSError:  # I/O error, or a pipe: command that exited non-zero while read
        outcome = "unreadable"
    finally:
        try:
            stream.close()
        except OSError:  # a pipe: command that exited non-zero
            outcome = "unreadable"
    if outcome == "truncated":
        stats.truncated_shards += 1
    elif outcome == "unreadable":
        stats.unreadable_shards += 1
    if outcome == "unreadable":  # the pending sample cannot be trusted
        stats.lost_to_truncation += current is not None or reading is not None
        return
    if reading is not None:  # a member's data was cut: its sample is lost
        stats.lost_to_truncation += 1
        if current is not None and current["__key__"] == reading:
            return
    if current is None:
        return
    if outcome == "complete" or _has_image_and_caption(current):
        yield current
    else:  # cut between two of its members: what was read may be only a part of it
        stats.lost_to_truncation += 1


def _has_image_and_caption(sample: dict[str, Any]) -> bool:
    return any(k in sample for k in SHARD_IMAGE_KEYS) and SHARD_CAPTION_KEY in sample


class ShardReader:
    """Iterate ``BackboneSample``s from webdataset shards, deterministically split over ranks.

    Args:
        urls: shard paths / URLs, brace patterns or a list of them (see ``expand_urls``).
        max_candidates: stop after this many candidates of the global stream (None: all).
        filters: ``MetadataFilter``s or their string forms; a sample must pass all.
        rank, world_size: this process's share. For DataLoader workers pass
            ``rank = global_rank * num_workers + worker_id`` and ``world_size = ranks * num_workers``.
        split_by: ``"sample"`` or ``"shard"``.
        min_image_size: skip a candidate whose decoded image's shorter side is below this many
            pixels (counted in ``stats.skipped_too_small``); 0 keeps every size.
        sample_ratio: keep this fraction of the candidates, chosen by a hash of each sample's
            key (the same subset on every run and world size; counted in ``stats.not_sampled``).

    A *candidate* is a sample that has an image member, a non-empty caption (its ``.txt``, else
    its json's ``"caption"``), parsable (or absent) JSON metadata and passes the filters: checks
    that need no image decoding. A candidate whose image does not decode, or decodes smaller than
    ``min_image_size``, keeps its index and is counted, not yielded.
    With ``split_by="sample"`` every rank reads every shard; candidate i (global order: shard
    order, then member order) belongs to rank ``i % world_size`` and only the owner decodes its
    image, so a corrupt image is counted (and skipped) by its owner alone. ``max_candidates``
    caps the global index, so the union over ranks equals the single-process stream for any
    world_size. Samples failing the cheap checks are counted by rank ``j % world_size``, j being
    their index among all samples, so summing ``stats`` over ranks gives the single-process counts.
    With ``split_by="shard"`` rank r reads shards j with ``j % world_size == r`` whole.

    ``stats`` is a fresh ``ShardStats`` at the start of each iteration, updated as it goes.
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        *,
        max_candidates: int | None = None,
        filters: Sequence[MetadataFilter | str] = (),
        rank: int = 0,
        world_size: int = 1,
        split_by: str = "sample",
        sample_ratio: float = 1.0,
        min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        if split_by not in _SPLIT_MODES:
            raise ConfigError(f"split_by must be one of {_SPLIT_MODES}, got {split_by!r}.")
        if max_candidates is not None and max_candidates < 0:
            raise ConfigError(f"max_candidates must be >= 0 or None, got {max_candidates}.")
        self.urls = check_shards_exist(urls)
        if split_by == "shard" and world_size > 1:
            if max_candidates is not None:
                raise ConfigError(
                    "max_candidates with split_by='shard' and several ranks would cap each rank"
                    " differently; use split_by='sample' or drop max_candidates."
                )
            if len(self.urls) < world_size:
                raise ConfigError(
                    f"split_by='shard' needs at least one shard per rank: {len(self.urls)} shard(s)"
                    f" for world_size={world_size}; use split_by='sample'."
                )
        if not 0.0 < sample_ratio <= 1.0:
            raise ConfigError(f"sample_ratio must be in (0, 1], got {sample_ratio}.")
        if min_image_size < 0:
            raise ConfigError(f"min_image_size must be >= 0, got {min_image_size}.")
        self.max_candidates = max_candidates
        self.sample_ratio = sample_ratio
        self.min_image_size = min_image_size
        self.filters = tuple(f if isinstance(f, MetadataFilter) else MetadataFilter.parse(f) for f in filters)
        self.rank, self.world_size, self.split_by = rank, world_size, split_by
        self.stats = ShardStats()

    def __iter__(self) -> Iterator[BackboneSample]:
        self.stats = ShardStats()
        return self._generate(self.stats)

    def _generate(self, stats: ShardStats) -> Iterator[BackboneSample]:
        by_sample = self.split_by == "sample"
        urls = self.urls if by_sample else self.urls[self.rank :: self.world_size]
        ranks = self.world_size if by_sample else 1
        rank = self.rank if by_sample else 0
        sample_index, candidate_index = 0, 0
        if self.max_candidates == 0:
            return
        for url in urls:
            for raw in _iter_shard_samples(url, stats):
                owns_sample = sample_index % ranks == rank
                sample_index += 1
                parsed = self._cheap_checks(raw)
                if isinstance(parsed, str):
                    if owns_sample:
                        setattr(stats, parsed, getattr(stats, parsed) + 1)
                    continue
                if self.sample_ratio < 1.0 and not in_sample(raw["__key__"], self.sample_ratio):
                    stats.not_sampled += owns_sample
                    continue
                owns_candidate = candidate_index % ranks == rank
                candidate_index += 1
                if owns_candidate:
                    image_data, caption, metadata, read = parsed
                    if read is not None:
                        setattr(stats, read, getattr(stats, read) + 1)
                    try:
                        image = decode_image(image_data)
                    except Exception:  # PIL raises many types for bad bytes; all mean "corrupt"
                        stats.skipped_corrupt_image += 1
                    else:
                        if min(image.size) < self.min_image_size:
                            stats.skipped_too_small += 1
                        else:
                            stats.yielded += 1
                            yield BackboneSample(raw["__key__"], image, caption, metadata, url, candidate_index - 1)
                if self.max_candidates is not None and candidate_index >= self.max_candidates:
                    return

    def _cheap_checks(self, raw: dict[str, Any]) -> tuple[bytes, str, dict[str, Any], str | None] | str:
        """``(image bytes, caption, metadata, how the caption was read)``, or the name of the stats
        counter to bump. The caption is the ``.txt`` member's, else the json's ``"caption"``;
        undecodable bytes are replaced (U+FFFD), not a reason to drop the sample."""
        image_data = next((raw[k] for k in SHARD_IMAGE_KEYS if k in raw), None)
        if image_data is None:
            return "skipped_missing_image"
        metadata: Any = {}
        if SHARD_METADATA_KEY in raw:
            try:
                metadata = json.loads(raw[SHARD_METADATA_KEY])
            except ValueError:
                return "skipped_bad_metadata"
            if not isinstance(metadata, dict):
                return "skipped_bad_metadata"
        caption, read = "", None
        if SHARD_CAPTION_KEY in raw:
            try:
                caption = raw[SHARD_CAPTION_KEY].decode("utf-8").strip()
            except UnicodeDecodeError:
                caption, read = raw[SHARD_CAPTION_KEY].decode("utf-8", errors="replace").strip(), "captions_repaired"
        if not caption and isinstance(metadata.get("caption"), str):
            caption, read = metadata["caption"].strip(), "captions_from_json"
        if not caption:
            return "skipped_missing_caption"
        if not all(f(metadata) for f in self.filters):
            return "skipped_filtered"
        return image_data, caption, metadata, read
