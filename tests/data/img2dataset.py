"""An img2dataset-shaped output folder for tests: per shard ``NNNNN.tar`` and ``NNNNN_stats.json``.

img2dataset also writes ``NNNNN.parquet`` (the per-sample metadata table); neither pandas nor
pyarrow is installed here and dreambat never reads it, so these fixtures leave it out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dreambat.data.shard_writer import write_shards


def write_img2dataset_shard(
    folder: Path, index: int, records: Sequence[Any], *, failures: Mapping[str, int] | None = None,
    successes: int | None = None, keep_bytes: int | None = None,
) -> Path:
    """Write shard ``index`` of ``records`` and its stats as img2dataset does; return the tar's path.

    ``failures`` are the failed downloads by status (``{"HTTP Error 404": 2}``); ``successes``
    defaults to ``len(records)``; ``keep_bytes`` cuts the tar after that many bytes afterwards (a
    truncated copy whose stats still say what img2dataset wrote).
    """
    folder.mkdir(parents=True, exist_ok=True)
    tar = write_shards(records, folder / f"{index:05d}.tar")[0]
    if keep_bytes is not None:
        tar.write_bytes(tar.read_bytes()[:keep_bytes])
    successes = len(records) if successes is None else successes
    failures = dict(failures or {})
    now = time.time()
    stats = {
        "count": successes + sum(failures.values()),
        "successes": successes,
        "failed_to_download": sum(v for k, v in failures.items() if "decoding" not in k),
        "failed_to_resize": sum(v for k, v in failures.items() if "decoding" in k),
        "duration": 1.5,
        "start_time": now - 1.5,
        "end_time": now,
        "status_dict": ({"success": successes} if successes else {}) | failures,
    }
    (folder / f"{index:05d}_stats.json").write_text(json.dumps(stats, indent=4))
    return tar
