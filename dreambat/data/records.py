"""The manifest record of a LAION-style backbone candidate.

The influence core's :class:`~dreambat.albat.ManifestRecord` knows a candidate by its index and key
only; what a webdataset shard adds (the shard's ``url``, the candidate's own ``caption``) travels
in the record's ``source``, written between ``key`` and ``score`` in each manifest line.
"""

from __future__ import annotations

from typing import Any

from ..albat import ManifestRecord


def candidate_record(index: int, key: str, url: str, caption: str, score: float | None = None,
                     **fields: Any) -> ManifestRecord:
    """A manifest record of the candidate ``key`` of shard ``url`` (``fields``: the core's others)."""
    return ManifestRecord(index, key, score, source={"url": url, "caption": caption}, **fields)


def sample_source(sample: Any) -> dict[str, str]:
    """What a manifest remembers of a :class:`~dreambat.data.shards.BackboneSample`: shard url, caption."""
    return {"url": sample.url, "caption": sample.caption}


def record_url(record: ManifestRecord) -> str:
    """The shard a candidate's record came from."""
    return str(record.source.get("url", ""))


def record_caption(record: ManifestRecord) -> str:
    """The candidate's own caption."""
    return str(record.source.get("caption", ""))
