"""Stages 1-3 of a BAT run, each reusable from an earlier (possibly interrupted) run.

* :func:`surrogate_stage` trains the surrogate LoRA into ``output_dir/surrogate`` (or takes the
  one given), and reuses a finished surrogate that the run-folder plan found reusable.
* :func:`scoring_stage` scores the backbone candidates (:func:`~dreambat.scoring.run.score_pool`
  decides whether to score, resume or reuse).
* :func:`selection_stage` applies the selection rule once, to the records just scored, to those of
  ``--selection_manifest``, or to the pool listed without scores, and writes ``selection.jsonl``
  once.

Every function is called on every process; only the main process writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import broadcast_object_list

from ..albat import SIMILARITY, ManifestRecord, SelectionResult, meta_path, read_manifest
from ..constants import LORA_WEIGHTS_NAME, SELECTION_MANIFEST_NAME
from ..data.records import candidate_record
from ..data.shard_probe import ShardProbe
from ..inputs import ResolvedInputs
from ..launch import process_state
from ..reuse import unscored_fingerprint
from ..scoring.consistency import load_caption_filter
from ..scoring.run import ScoredPool, finish_scoring, score_pool, select_and_write
from ..training.dreambooth import run_dreambooth
from .config import BatSettings

logger = logging.getLogger(__name__)


@dataclass
class StageOutcome:
    """How a stage ended: ``ran``, ``resumed``, ``reused`` (finished earlier), ``given`` or ``skipped``."""

    status: str
    path: Path | None = None


def surrogate_stage(
    settings: BatSettings, output_dir: Path, resolved: ResolvedInputs, *, given: Path | None, reusable: bool
) -> StageOutcome:
    """Stage 1: the surrogate LoRA's weights file, trained now, reused, or given by the user.

    ``given``: the weights file of ``--surrogate_lora``; ``reusable``: the folder's surrogate was
    trained with this run's settings (:func:`dreambat.reuse.plan_run_folder`).
    """
    if given is not None:
        return StageOutcome("given", given)
    config = settings.surrogate_config(output_dir)
    weights = Path(config.output_dir) / LORA_WEIGHTS_NAME
    if reusable and weights.is_file():
        logger.info("Stage 1/5: reusing the surrogate LoRA in %s (same settings).", config.output_dir)
        return StageOutcome("reused", weights)
    logger.info("Stage 1/5: training the surrogate LoRA for %d steps on the subject.", settings.bat.surrogate_steps)
    result = run_dreambooth(config, resolved=resolved, description="surrogate")
    return StageOutcome("resumed" if result.resumed_from else "ran", weights)


def scoring_stage(
    settings: BatSettings, surrogate: Path | None, resolved: ResolvedInputs, shards: ShardProbe
) -> ScoredPool:
    """Stage 2: the scores the selection rule ranks by, for every candidate (nothing selected yet)."""
    if settings.selection.needs.scores == SIMILARITY:
        logger.info("Stage 2/5: ranking backbone candidates by CLIP similarity to %s (%s).",
                    settings.selection.clip_query_phrase, settings.selection.clip_model)
    else:
        logger.info("Stage 2/5: scoring backbone candidates with ALBAT (K=%d, %s).",
                    settings.scoring.num_score_timesteps, settings.scoring.curvature)
    return score_pool(settings.score_settings(surrogate), resolved, surrogate, shards)


def list_candidates(settings: BatSettings, shards: ShardProbe) -> list[ManifestRecord]:
    """Every candidate of the pool without a score (a rule that reads no score needs no surrogate),
    read from the probe's usable shards, as scoring reads them; with ``--min_clip_score`` those
    whose caption does not fit their image are listed as skipped."""
    pool, selection = settings.pool, settings.selection
    reader = pool.reader(shards.usable)
    caption_filter = load_caption_filter(selection.clip_model, selection.clip_pretrained, pool.min_clip_score,
                                         process_state().device)
    if caption_filter is None:
        records = [candidate_record(s.index, s.key, s.url, s.caption) for s in reader]
    else:  # chunk by chunk: only a chunk's images are held at once
        records = []
        for chunk in caption_filter.chunks(reader):
            passing, rejected = caption_filter.split(chunk)
            records += rejected + [ManifestRecord(s.index, s.key, None, source=caption_filter.source(s)) for s in passing]
        records.sort(key=lambda r: r.index)
    logger.info("Listed %d backbone candidates (%s%s).", len(records), reader.stats.summary(),
                f"; {caption_filter.rejected} below --min_clip_score" if caption_filter else "")
    return records


def selection_stage(
    settings: BatSettings, output_dir: Path, *, scored: ScoredPool | None, manifest: Path | None,
    shards: ShardProbe | None = None,
) -> tuple[list[ManifestRecord], SelectionResult, dict | None]:
    """Stage 3: apply the selection rule once and write ``output_dir/selection.jsonl`` once.

    The records are ``scored`` (stage 2 of this run, whose report is written too), else those of
    ``manifest`` (``--selection_manifest``), else the pool listed without scores (from the usable
    ``shards``). Returns the
    flagged records, the rule's result and the scoring report (``None`` without stage 2), the same
    on every process.
    """
    state = process_state()
    rule = settings.selection.rule(settings.seed)
    records: list[ManifestRecord] = []
    result, report = None, None
    if state.is_main_process:
        if scored is not None:
            records, result, report = finish_scoring(scored, rule)
        else:
            if manifest is not None:
                records = read_manifest(manifest)
                meta = meta_path(manifest)
                fp = json.loads(meta.read_text()) if meta.is_file() else {"source": str(manifest)}
            else:
                records = list_candidates(settings, shards)
                fp = unscored_fingerprint(settings.pool, settings.selection)
            records, result = select_and_write(records, rule, output_dir / SELECTION_MANIFEST_NAME, fp)
    if state.num_processes > 1:
        records, result, report = broadcast_object_list([records, result, report], from_process=0)
    state.wait_for_everyone()
    return records, result, report
