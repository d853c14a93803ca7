"""One process's share of the candidate pool through a scorer into its part manifest, and the
counts every process reports (summed over processes by :func:`sum_counts`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from accelerate.utils import gather_object

from .. import preemption
from ..albat import ManifestWriter, read_manifest, score_candidates
from ..constants import SELECTION_MANIFEST_NAME
from ..data.records import sample_source
from ..data.shards import ShardReader
from ..launch import process_state
from ..progress import progress
from .config import ScoreSettings
from .consistency import SKIP_REASON as CAPTION_MISMATCH
from .consistency import load_caption_filter
from .shortlist import NOT_SHORTLISTED, Shortlist


def stream_scores(settings: ScoreSettings, scorer, collate, fp: dict, show_progress: bool, *, encoder=None,
            shortlist: Shortlist | None = None):
    """Score this process's share of the pool into its part manifest (resuming the final one's);
    with ``--min_clip_score``, candidates whose caption does not fit their image are recorded as
    skipped before they reach the scorer; with a ``shortlist``, only its candidates reach the
    scorer, the others are recorded as the first stage left them (it applied the caption filter).
    Returns the summary, the reader, and the candidates left out (by caption, by the shortlist)."""
    state = process_state()
    pool, output_dir = settings.pool, Path(settings.inputs.output_dir)
    reader = pool.reader(pool.backbone_shards, rank=state.process_index, world_size=state.num_processes)
    selection = settings.selection
    caption_filter = None if shortlist is not None else load_caption_filter(
        selection.clip_model, selection.clip_pretrained, pool.min_clip_score, state.device, encoder=encoder)
    part = output_dir / f"selection.rank{state.process_index:03d}.jsonl"
    manifest_path = output_dir / SELECTION_MANIFEST_NAME
    with ManifestWriter(part, fingerprint=fp) as writer:
        if manifest_path.exists():
            writer.done_indices.update(r.index for r in read_manifest(manifest_path))
        stoppable = preemption.until_stopped(reader)
        if shortlist is not None:
            candidates, source = shortlist.stream(stoppable, writer), shortlist.source
        elif caption_filter is not None:
            candidates, source = caption_filter.stream(stoppable, writer), caption_filter.source
        else:
            candidates, source = stoppable, sample_source
        summary = score_candidates(
            scorer, candidates, collate, writer, batch_size=settings.scoring.score_batch_size,
            path=settings.scoring.scoring_path,
            progress=progress if show_progress and state.is_local_main_process else None, source=source,
        )
    preemption.check(f"after {len(writer.done_indices)} scored candidates (they are in {part}; a rerun scores "
                     "the rest)")
    if shortlist is not None:
        return summary, reader, dict(shortlist.left_out)
    return summary, reader, {CAPTION_MISMATCH: 0 if caption_filter is None else caption_filter.rejected}


def gather_counts(reader: ShardReader, summary, left_out: dict[str, int]) -> list[dict]:
    """This process's counts (reader's, and the candidates left out before scoring, by reason) and
    scoring summary, gathered from every process."""
    counts = reader.stats.as_dict()
    left_out = {CAPTION_MISMATCH: 0, NOT_SHORTLISTED: 0} | left_out
    for reason, n in left_out.items():
        counts[f"skipped_{reason}"] = n
        counts["skipped"] += n
    mine = {"reader": counts, "summary": dataclasses.asdict(summary) | {"scores": None}}
    return gather_object([mine]) if process_state().num_processes > 1 else [mine]


# With split_by="sample" every process reads every shard: shard counts are per process, not summed.
_PER_PROCESS_SHARD_COUNTS = frozenset({"shards_read", "truncated_shards", "unreadable_shards"})


def sum_counts(stats) -> dict[str, int]:
    """Candidate counts summed over processes; shard counts as one process saw them (the maximum)."""
    total: dict[str, int] = {}
    for entry in stats:
        for key, value in entry.items():
            combine = max if key in _PER_PROCESS_SHARD_COUNTS else int.__add__
            total[key] = combine(total.get(key, 0), int(value))
    return total
