"""The selection manifest ``selection.jsonl``: one JSON line per scored backbone candidate.

The file is appended to batch by batch (one ``write`` per batch, then ``fsync``), so a crash leaves
at most one partial last line; reopening it with the same *fingerprint* (the settings that
determine the scores) resumes where scoring stopped. The fingerprint lives in a sidecar
``<manifest>.meta.json``. Full rewrites (merging per-process parts, setting ``selected`` flags) go
through a temporary file and ``os.replace``, so a reader never sees a half-written manifest.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import DataError
from ..files import atomic_write_text

STATUSES = ("scored", "skipped")
META_SUFFIX = ".meta.json"
# Scores of one candidate computed twice (two processes, two machines) agree to float noise.
DUPLICATE_SCORE_RTOL = 1e-5
DUPLICATE_SCORE_ATOL = 1e-12


class ManifestMismatchError(DataError):
    """A manifest on disk was scored with settings other than this run's: it cannot be resumed."""

    def __init__(self, message: str, fields: Sequence[str] = (), path: str | Path | None = None) -> None:
        super().__init__(message)
        self.fields = tuple(fields)
        self.path = None if path is None else Path(path)


@dataclass(frozen=True)
class ManifestRecord:
    """One candidate of a scored stream and its score.

    Attributes:
        index: global position of the candidate in the (unsplit) candidate stream.
        key: the candidate's unique key (e.g. a webdataset ``__key__``).
        score: Z(x); ``None`` when it could not be scored (see ``reason``).
        status: ``"scored"`` or ``"skipped"``.
        reason: why it was skipped, e.g. ``"nonfinite_loss"``, ``"corrupt_image"``.
        selected: whether the selection rule kept it; ``None`` until selection is decided.
        split_scores: the four half-estimates ``Z_Aa, Z_Ab, Z_Ba, Z_Bb`` behind the run's
            split-half reliability (:mod:`dreambat.albat.reliability`); ``None`` when not computed.
            Written to the file only when present.
        loss: the candidate's mean loss over its terms, as scored; ``None`` when not recorded.
        grad_norm: ``‖∇ℓ(x)‖`` over the scored LoRA blocks (what an unnormalised score grows
            with); ``None`` when not recorded. Both are written only when present.
        source: what the application remembers of the candidate, opaque to the core (for a
            LAION-style shard: its shard ``url`` and ``caption``, see
            :func:`dreambat.data.records.candidate_record`). Written between ``key`` and ``score``,
            in its own order; names that the record itself uses are not allowed.
    """

    index: int
    key: str
    score: float | None = None
    status: str = "scored"
    reason: str | None = None
    selected: bool | None = None
    split_scores: tuple[float, float, float, float] | None = None
    loss: float | None = None
    grad_norm: float | None = None
    source: Mapping[str, Any] = field(default_factory=dict, compare=True)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise DataError(f"Manifest record {self.index}: status must be one of {STATUSES}, got {self.status!r}.")
        clash = set(self.source) & _RECORD_FIELDS
        if clash:
            raise DataError(f"Manifest record {self.index}: source fields {sorted(clash)} clash with the record's own.")

    @property
    def has_score(self) -> bool:
        """True when the record is ``scored`` and its score is a finite number."""
        return self.status == "scored" and self.score is not None and math.isfinite(self.score)

    def to_json(self) -> str:
        """One line of strict JSON (no newline); a non-finite score is written as ``null``."""
        data = {"index": self.index, "key": self.key, **self.source, "score": self.score, "status": self.status,
                "reason": self.reason, "selected": self.selected, "split_scores": self.split_scores,
                "loss": self.loss, "grad_norm": self.grad_norm}
        if data["score"] is not None:
            data["score"] = float(data["score"]) if math.isfinite(data["score"]) else None
        if data["split_scores"] is None:
            del data["split_scores"]
        else:
            data["split_scores"] = [float(v) if math.isfinite(v) else None for v in data["split_scores"]]
        for name in ("loss", "grad_norm"):
            if data[name] is None:
                del data[name]
            else:
                data[name] = float(data[name]) if math.isfinite(data[name]) else None
        return json.dumps(data, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> ManifestRecord:
        """Parse one manifest line; :class:`~dreambat.errors.DataError` if it is not a record."""
        try:
            data = json.loads(line)
            return cls(
                index=int(data["index"]), key=str(data["key"]),
                score=None if data.get("score") is None else float(data["score"]),
                status=data.get("status", "scored"), reason=data.get("reason"), selected=data.get("selected"),
                split_scores=_split_scores(data.get("split_scores")),
                loss=None if data.get("loss") is None else float(data["loss"]),
                grad_norm=None if data.get("grad_norm") is None else float(data["grad_norm"]),
                source={k: v for k, v in data.items() if k not in _RECORD_FIELDS},
            )
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"Not a manifest record: {line[:120]!r} ({error}).") from error


_RECORD_FIELDS = frozenset(f.name for f in dataclass_fields(ManifestRecord)) - {"source"}


def _split_scores(values: Any) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    if len(values) != 4:
        raise ValueError(f"split_scores must hold 4 values, got {len(values)}")
    return tuple(float("nan") if v is None else float(v) for v in values)


def meta_path(path: str | Path) -> Path:
    """The fingerprint sidecar of a manifest: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


def _normalise(fingerprint: dict) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fingerprint(path: str | Path, fingerprint: dict) -> None:
    """Raise :class:`ManifestMismatchError` if the manifest at ``path`` was scored otherwise.

    A manifest that does not exist (or is empty) always passes. One without a sidecar has unknown
    settings and is refused, as is one whose sidecar differs from ``fingerprint``; the message
    names the differing fields.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    meta = meta_path(path)
    if not meta.is_file():
        raise ManifestMismatchError(f"Manifest {path} has no settings file {meta.name}, so it cannot be resumed.",
                                    path=path)
    try:
        stored = json.loads(meta.read_text())
    except ValueError as error:
        raise ManifestMismatchError(f"Settings file {meta} is unreadable ({error}).", path=path) from error
    current = _normalise(fingerprint)
    fields = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    if fields:
        changes = "; ".join(f"{k}: {_short(stored.get(k))} -> {_short(current.get(k))}" for k in fields)
        raise ManifestMismatchError(
            f"Manifest {path} was scored with other settings ({changes}), so it cannot be resumed.",
            fields, path,
        )


def _parse(data: bytes, path: Path) -> tuple[list[ManifestRecord], int]:
    """Records of a manifest's bytes and the byte length of its complete, parsable part.

    A last line without a newline, or an unparsable last line, is what a crash leaves: it is left
    out. An unparsable line anywhere else means the file is corrupt.
    """
    records: list[ManifestRecord] = []
    good = 0
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (b"" if none)
    for number, raw in enumerate(complete, start=1):
        end = good + len(raw) + 1
        if not raw.strip():
            good = end
            continue
        try:
            records.append(ManifestRecord.from_json(raw.decode("utf-8")))
        except (DataError, UnicodeDecodeError) as error:
            if number == len(complete) and not tail:
                break
            raise DataError(
                f"Manifest {path} line {number} is not a manifest record ({error})."
            ) from error
        good = end
    return records, good


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """All complete records of a manifest, sorted by ``index``; a partial last line is ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No selection manifest at {path}: run `dreambat score` first, or check the path.")
    records, _ = _parse(path.read_bytes(), path)
    return sorted(records, key=lambda r: r.index)


class ManifestWriter:
    """Append-only, crash-safe writer of one manifest; resumes a manifest with the same fingerprint.

    Use as a context manager::

        with ManifestWriter(out / "selection.jsonl", fingerprint=fp) as writer:
            todo = [c for c in candidates if c.index not in writer.done_indices]
            writer.write(records)

    Attributes:
        path: the manifest.
        records: records already in the file when it was opened (resume), in file order.
        done_indices / done_keys: indices / keys of every record in the file, updated on write.
    """

    def __init__(self, path: str | Path, *, fingerprint: dict) -> None:
        self.path = Path(path)
        self.fingerprint = _normalise(fingerprint)
        self.records: list[ManifestRecord] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            check_fingerprint(self.path, self.fingerprint)
            data = self.path.read_bytes()
            self.records, good = _parse(data, self.path)
            if good < len(data):
                with open(self.path, "r+b") as handle:
                    handle.truncate(good)
                    handle.flush()
                    os.fsync(handle.fileno())
        atomic_write_text(meta_path(self.path), json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")
        self.done_indices: set[int] = {r.index for r in self.records}
        self.done_keys: set[str] = {r.key for r in self.records}
        self._handle = open(self.path, "ab")

    def write(self, records: Iterable[ManifestRecord]) -> None:
        """Append ``records`` with one ``write`` call, then flush and fsync."""
        records = list(records)
        if not records:
            return
        if self._handle.closed:
            raise DataError(f"Manifest writer of {self.path} is closed.")
        self._handle.write("".join(r.to_json() + "\n" for r in records).encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.done_indices.update(r.index for r in records)
        self.done_keys.update(r.key for r in records)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_manifest(records: Iterable[ManifestRecord], path: str | Path, *, fingerprint: dict) -> None:
    """Rewrite the manifest at ``path`` with ``records`` (sorted by index) and its fingerprint, atomically.

    The manifest is replaced first, then its sidecar: if the rewrite fails, both old files are intact.
    """
    path = Path(path)
    ordered = sorted(records, key=lambda r: r.index)
    atomic_write_text(path, "".join(r.to_json() + "\n" for r in ordered))
    atomic_write_text(meta_path(path), json.dumps(_normalise(fingerprint), indent=2, sort_keys=True) + "\n")


def _same_score(a: ManifestRecord, b: ManifestRecord) -> bool:
    if a.has_score and b.has_score:
        return math.isclose(a.score, b.score, rel_tol=DUPLICATE_SCORE_RTOL, abs_tol=DUPLICATE_SCORE_ATOL)
    return a.has_score == b.has_score


def merge_manifests(parts: Sequence[str | Path], out: str | Path, *, fingerprint: dict) -> list[ManifestRecord]:
    """:func:`merge_records` of ``parts``, written atomically to ``out`` (which may be one of them)."""
    records = merge_records(parts, fingerprint=fingerprint)
    write_manifest(records, out, fingerprint=fingerprint)
    return records


def merge_records(parts: Sequence[str | Path], *, fingerprint: dict) -> list[ManifestRecord]:
    """Union of per-process manifests, sorted by index; nothing is written.

    Each part must carry ``fingerprint`` (a part scored with other settings raises
    :class:`ManifestMismatchError`). A candidate present in several parts is kept once; if its key
    or score differ between parts (beyond float noise, relative 1e-5) the parts come from different
    streams and :class:`~dreambat.errors.DataError` is raised.
    """
    merged: dict[int, ManifestRecord] = {}
    sources: dict[int, Path] = {}
    for part in map(Path, parts):
        check_fingerprint(part, fingerprint)
        for record in read_manifest(part):
            seen = merged.get(record.index)
            if seen is None:
                merged[record.index] = record
                sources[record.index] = part
            elif seen.key != record.key or not _same_score(seen, record):
                raise DataError(
                    f"Candidate {record.index} differs between {sources[record.index]} "
                    f"(key {seen.key!r}, score {seen.score}) and {part} (key {record.key!r}, score "
                    f"{record.score}): these manifests come from different runs. Score again into a new folder."
                )
    return [replace(merged[i]) for i in sorted(merged)]
