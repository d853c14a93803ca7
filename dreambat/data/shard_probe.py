"""Check backbone shards before any model loads: refuse garbage, skip empty shards, read img2dataset's stats.

img2dataset writes one tar per shard, and beside it ``NNNNN.parquet`` and ``NNNNN_stats.json``; a
shard whose every download failed is a valid tar holding no sample (its stats say
``"successes": 0``). So :func:`probe_shards` sorts the shards of a pool into

* *refused* (the run stops, naming each): a path that does not exist, a 0-byte file, a file that is
  not a tar archive, a shard that cannot be read or is cut before its first sample, and a pool in
  which no shard yields a usable sample;
* *empty* (skipped, with one warning line, and listed in the report): a valid tar with no samples,
  or with no usable sample (decodable image, caption, passing the filters). ``strict=True``
  (``--strict_shards``) refuses them instead;
* *usable*: the rest, which callers hand to :class:`~dreambat.data.shards.ShardReader`. An empty
  shard yields no candidate, so the candidates' global indices are those of reading every shard.

Where ``<shard>_stats.json`` is there, its ``successes`` is the number of samples img2dataset wrote;
a shard holding fewer is truncated or damaged, and is named in a warning.

In a run of several processes :func:`shared_shard_probe` probes on the main process alone and hands
its result (or its refusal) to every process, so all read the same shards and stop together.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from dreambat.errors import DataError

from .filters import MetadataFilter
from .shards import _SKIP_META, ShardReader, _has_image_and_caption, _local_path, check_shards_exist

logger = logging.getLogger(__name__)

_SHOWN = 5  # shards named in one warning line
_REFUSED, _EMPTY = "refused", "empty"
_TAR_SUFFIX = re.compile(r"\.(tar(\.[A-Za-z0-9]+)?|tgz)$")


@dataclass(frozen=True)
class ShardProbe:
    """What :func:`probe_shards` found, shard by shard (urls as expanded from the flag, in order)."""

    given: tuple[str, ...]
    usable: tuple[str, ...]
    """The shards to read: every given shard except the empty ones."""
    empty: dict[str, str] = field(default_factory=dict)
    """Skipped shards, each with why it has no usable sample."""
    expected: dict[str, int] = field(default_factory=dict)
    """img2dataset's ``successes`` of each shard that has a readable ``_stats.json``."""
    found: dict[str, int] = field(default_factory=dict)
    """Samples held whole by each shard of ``expected`` (see :func:`count_whole_samples`)."""
    download_errors: dict[str, int] = field(default_factory=dict)
    """img2dataset's ``status_dict`` summed over those shards, without ``success``."""
    bad_stats: dict[str, str] = field(default_factory=dict)
    """Stats files that are there but unreadable, each with what is wrong (ignored otherwise)."""

    @property
    def short(self) -> list[str]:
        """Shards holding fewer samples than their stats say (truncated or damaged)."""
        return [url for url, n in self.expected.items() if self.found[url] < n]

    def report(self) -> dict[str, Any]:
        """The ``shards`` section of ``score_report.json`` and ``bat_report.json``.

        ``given``: shards after brace expansion; ``used``: shards read; ``empty_shards``: skipped
        ones, with ``empty_reasons`` (url: why); ``with_stats``: shards with a readable img2dataset
        ``_stats.json``; ``expected_samples``: their ``successes`` summed; ``found_samples``: the
        samples those same shards hold whole (both ``None`` when no shard has stats);
        ``short_shards``: ``{"url", "expected", "found"}`` of each shard holding fewer than its
        stats say; ``download_errors``: img2dataset's failed downloads by status; ``bad_stats``:
        unreadable stats files.
        """
        with_stats = bool(self.expected)
        return {
            "given": len(self.given),
            "used": len(self.usable),
            "empty_shards": list(self.empty),
            "empty_reasons": dict(self.empty),
            "with_stats": len(self.expected),
            "expected_samples": sum(self.expected.values()) if with_stats else None,
            "found_samples": sum(self.found.values()) if with_stats else None,
            "short_shards": [{"url": u, "expected": self.expected[u], "found": self.found[u]} for u in self.short],
            "download_errors": dict(self.download_errors),
            "bad_stats": dict(self.bad_stats),
        }


def stats_path(url: str) -> str | None:
    """Where img2dataset puts a local shard's stats (``laion/00002.tar`` -> ``laion/00002_stats.json``);
    ``None`` for ``pipe:`` commands and remote URLs."""
    path = _local_path(url)
    return None if path is None else _TAR_SUFFIX.sub("", path) + "_stats.json"


def read_img2dataset_stats(url: str) -> dict[str, Any] | None:
    """The ``_stats.json`` img2dataset wrote beside shard ``url``, or ``None`` when there is none.

    Raises:
        ValueError: the file is there but is not img2dataset stats (no integer ``successes``).
    """
    path = stats_path(url)
    if path is None or not os.path.isfile(path):
        return None
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot be read as JSON ({error})") from None
    successes = stats.get("successes") if isinstance(stats, dict) else None
    if not isinstance(successes, int) or isinstance(successes, bool) or successes < 0:
        raise ValueError("holds no integer 'successes' (is it img2dataset's stats file?)")
    return stats


def count_whole_samples(path: str) -> int:
    """Samples of a local shard whose members are all there in full, from the tar headers alone.

    Member data is skipped by seeking, so this costs one 512-byte read per member. A sample whose
    member data runs past the end of the file is not counted. Where the archive ends without its
    end-of-archive block (a cut between members), the sample read last counts when it holds every
    member the first sample holds (img2dataset writes the same members for every sample), or, being
    the only one, an image and a caption.
    """
    size = os.path.getsize(path)
    members: dict[str, set[str]] = {}  # key -> member extensions, in archive order
    cut = unfinished = False
    with open(path, "rb") as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r:*") as tar:
                plain = tar.fileobj is raw  # member offsets are file offsets only in a plain tar
                for info in tar:
                    tar.members = []  # keep no TarInfo per member
                    prefix, suffix = base_plus_ext(info.name)
                    if not info.isreg() or prefix is None or _SKIP_META.match(info.name):
                        continue
                    if plain and info.offset_data + info.size > size:
                        cut = prefix in members and prefix == list(members)[-1]
                        break
                    members.setdefault(prefix, set()).add(suffix.lower())
                else:
                    if plain:
                        raw.seek(tar.offset)
                        unfinished = raw.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE)
        except (tarfile.TarError, EOFError, OSError, zlib.error):
            unfinished = True
    if cut:
        return len(members) - 1
    if unfinished and members:
        exts = list(members.values())
        whole = exts[-1] >= exts[0] if len(exts) > 1 else _has_image_and_caption(dict.fromkeys(exts[0]))
        return len(members) - (not whole)
    return len(members)


def probe_shards(
    urls: str | Path | Sequence[str | Path], filters: Sequence[MetadataFilter | str] = (), *, strict: bool = False
) -> ShardProbe:
    """Sort the shards of a pool into refused, empty and usable (see the module docstring).

    Each shard is read up to its first candidate (a few kilobytes), and a local shard with an
    img2dataset ``_stats.json`` has its tar headers walked to count its samples. Logs one warning
    line for the empty shards and one for the short ones. A probe of unchanged local files is
    computed once per process (a BAT run checks its pool, then scores it).

    Raises:
        ShardNotFoundError: missing shards (see :func:`~dreambat.data.shards.check_shards_exist`).
        DataError: unusable shards, a pool with no usable sample, or (``strict``) empty shards;
            every shard concerned is named with what is wrong and what to do.
    """
    expanded = check_shards_exist(urls)
    key = _cache_key(expanded, filters, strict)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    problems = {url: problem for url in expanded if (problem := _shard_problem(url, filters))}
    refused = [f"{url}: {text}" for url, (kind, text) in problems.items() if kind == _REFUSED]
    if refused:
        raise DataError(
            f"{len(refused)} of {len(expanded)} backbone shard(s) cannot be used:\n  {_listing(refused)}\n"
            "Remove them from --backbone_shards (or repair them: LAION-style shards are tar files of "
            "<key>.jpg + <key>.txt [+ <key>.json] samples, as img2dataset writes them)."
        )
    probe = _account(expanded, {url: text for url, (_, text) in problems.items()})
    listing = _listing([f"{url}: {text}" for url, text in probe.empty.items()])
    if not probe.usable:
        raise DataError(
            f"None of the {len(expanded)} backbone shard(s) holds a usable sample:\n  {listing}\n"
            "img2dataset writes an empty shard when every download of it failed (its _stats.json says "
            "why): check the download, the paths, and --backbone_filter."
        )
    if strict and probe.empty:
        raise DataError(
            f"--strict_shards: {len(probe.empty)} of {len(expanded)} backbone shard(s) hold no usable "
            f"sample:\n  {listing}\nRemove them from --backbone_shards, or drop --strict_shards to skip "
            "them with a warning."
        )
    _log(probe)
    if key is not None:
        _CACHE.clear()  # one pool per run: keep the latest probe only
        _CACHE[key] = probe
    return probe


def shared_shard_probe(
    urls: str | Path | Sequence[str | Path], filters: Sequence[MetadataFilter | str] = (), *, strict: bool = False
) -> ShardProbe:
    """:func:`probe_shards` on the main process; every process gets its result, or raises its error.

    Call it on every process (it is a collective call when there are several): all then read the
    same usable shards, and all stop together on a refusal.
    """
    from ..launch import on_main_for_all

    return on_main_for_all(lambda: probe_shards(urls, filters, strict=strict))


_CACHE: dict[tuple, ShardProbe] = {}


def _cache_key(urls: list[str], filters: Sequence[MetadataFilter | str], strict: bool) -> tuple | None:
    """What a probe depends on: the shards and stats files (size, mtime), filters, strictness.
    ``None`` (never cached) when a shard is a ``pipe:`` command or a remote URL."""
    files = []
    for url in urls:
        path = _local_path(url)
        if path is None:
            return None
        for name in (path, stats_path(url)):
            try:
                status = os.stat(name)
            except OSError:
                files.append((name, None))
            else:
                files.append((name, status.st_size, status.st_mtime_ns))
    return tuple(urls), tuple(str(f) for f in filters), strict, tuple(files)


def _shard_problem(url: str, filters: Sequence[MetadataFilter | str]) -> tuple[str, str] | None:
    """``(kind, what is wrong)`` of one shard, kind ``refused`` or ``empty``; ``None`` when it yields a candidate."""
    path = _local_path(url)
    if path is not None:
        if os.path.getsize(path) == 0:
            return _REFUSED, "the file is empty (0 bytes; an interrupted copy?)"
        if not tarfile.is_tarfile(path):
            return _REFUSED, "not a tar archive (is it a shard at all?)"
    reader = ShardReader([url], filters=filters)
    if next(iter(reader), None) is not None:  # stops reading at the first candidate
        return None
    stats = reader.stats
    if stats.unreadable_shards:
        return _REFUSED, "cannot be read (I/O error, or the pipe: command failed)"
    reasons = [f"{value} {name.removeprefix('skipped_').replace('_', ' ')}"
               for name, value in stats.as_dict().items() if name.startswith("skipped_") and value]
    if stats.truncated_shards and not reasons:
        return _REFUSED, "truncated before its first complete sample (an interrupted copy? copy it again)"
    if not reasons:
        return _EMPTY, "holds no samples"
    hint = " (check --backbone_filter)" if stats.skipped_filtered else ""
    return _EMPTY, f"no usable sample: {', '.join(reasons)}{hint}"


def _account(urls: list[str], empty: dict[str, str]) -> ShardProbe:
    """The probe of shards none of which is refused: stats read, samples counted, reasons completed."""
    expected, found, errors, bad = {}, {}, {}, {}
    for url in urls:
        try:
            stats = read_img2dataset_stats(url)
        except ValueError as error:
            bad[stats_path(url)] = str(error)
            continue
        if stats is None:
            continue
        expected[url] = stats["successes"]
        found[url] = count_whole_samples(_local_path(url))
        status = {k: v for k, v in (stats.get("status_dict") or {}).items() if k != "success" and isinstance(v, int)}
        for name, count in status.items():
            errors[name] = errors.get(name, 0) + count
        if url in empty:
            empty[url] += f"; img2dataset: {_downloads(stats, status)}"
    usable = tuple(url for url in urls if url not in empty)
    return ShardProbe(tuple(urls), usable, empty, expected, found, errors, bad)


def _downloads(stats: dict[str, Any], status: dict[str, int]) -> str:
    """``"0 of 2 downloads succeeded; failed: HTTP Error 404 (1), Image decoding error (1)"``."""
    count = stats.get("count")
    text = f"{stats['successes']} successes"
    if isinstance(count, int):
        text = f"{stats['successes']} of {count} downloads succeeded"
    if status:
        text += "; failed: " + ", ".join(f"{k} ({v})" for k, v in sorted(status.items(), key=lambda kv: -kv[1]))
    return text


def _listing(lines: list[str], limit: int = 10) -> str:
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n  ".join(lines[:limit]) + more


def _log(probe: ShardProbe) -> None:
    """One warning line for the skipped shards, one for the short ones, one info line of the totals."""
    if probe.empty:
        named = [f"{url} ({why})" for url, why in list(probe.empty.items())[:_SHOWN]]
        more = f" and {len(probe.empty) - _SHOWN} more (listed in the report)" if len(probe.empty) > _SHOWN else ""
        logger.warning("Skipping %d of %d backbone shard(s) with no usable sample (--strict_shards refuses them "
                       "instead): %s%s.", len(probe.empty), len(probe.given), "; ".join(named), more)
    if probe.short:
        named = [f"{url} ({probe.found[url]} of {probe.expected[url]} samples)" for url in probe.short[:_SHOWN]]
        more = f" and {len(probe.short) - _SHOWN} more (listed in the report)" if len(probe.short) > _SHOWN else ""
        logger.warning("%d backbone shard(s) hold fewer samples than their img2dataset _stats.json says, so they "
                       "are truncated or damaged (download or copy them again; what they hold is used): %s%s.",
                       len(probe.short), "; ".join(named), more)
    if probe.bad_stats:
        logger.warning("Ignored %d unreadable img2dataset stats file(s): %s.", len(probe.bad_stats),
                       "; ".join(f"{path} {why}" for path, why in list(probe.bad_stats.items())[:_SHOWN]))
    if probe.expected:
        logger.info("Backbone shards: %d given, %d used; the %d with img2dataset stats hold %d of the %d samples "
                    "they list.", len(probe.given), len(probe.usable), len(probe.expected),
                    sum(probe.found.values()), sum(probe.expected.values()))
