"""Stages 1-3 of a BAT run, each reusable from an earlier (possibly interrupted) run.

* :func:`surrogate_stage` trains the surrogate LoRA into ``output_dir/surrogate`` (or takes the
  one given), and reuses a finished surrogate trained with the same settings.
* :func:`scoring_stage` scores the backbone candidates with ALBAT into ``output_dir/selection.jsonl``
  (:func:`~dreambat.scoring.run.run_scoring` decides whether to score, resume or reuse).
* :func:`selection_stage` applies the selection rule to the manifest's records (or lists the
  candidates without scores for ``--selection random``) and writes ``selected`` flags.

Every function is called on every process; only the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import broadcast_object_list

from ..albat.manifest import ManifestRecord, meta_path, read_manifest, write_manifest
from ..albat.selection import SelectionResult, apply_selection
from ..constants import LORA_WEIGHTS_NAME, RESOLVED_CONFIG_NAME, SELECTION_MANIFEST_NAME
from ..data.shard_probe import probe_shards
from ..data.shards import ShardReader
from ..inputs import ResolvedInputs
from ..launch import process_state
from ..lora import lora_weights_file
from ..scoring.config import PoolConfig
from ..scoring.run import run_scoring
from ..training.config import TrainConfig
from ..training.dreambooth import run_dreambooth
from .config import BatSettings
from .run_folder import SETTINGS_THAT_DO_NOT_CHANGE_WEIGHTS, SURROGATE_DIR

logger = logging.getLogger(__name__)



@dataclass
class StageOutcome:
    """How a stage ended: ``ran``, ``resumed``, ``reused`` (finished earlier), ``given`` or ``skipped``."""

    status: str
    path: Path | None = None
    report: dict | None = None


def surrogate_config(settings: BatSettings, output_dir: Path) -> TrainConfig:
    """Stage 1's run: the same DreamBooth settings on the subject alone, ``surrogate_steps`` long.

    No validation, no prior preservation (the surrogate defines the *adaptation* loss), checkpoints
    only for resuming an interrupted surrogate.
    """
    steps = settings.bat.surrogate_steps
    return dataclasses.replace(
        settings.train,
        output_dir=str(output_dir / SURROGATE_DIR),
        max_train_steps=steps,
        validation_prompt=None,
        validation_steps=None,
        validation_epochs=None,
        with_prior_preservation=False,
        class_data_dir=None,
        class_prompt=None,
        resume_from_checkpoint="latest",
        checkpointing_steps=max(steps // 4, 1),
        checkpoints_total_limit=1,
    )


def _same_settings(saved: Path, config: TrainConfig) -> bool:
    try:
        stored = json.loads(saved.read_text())
    except (OSError, ValueError):
        return False
    current = json.loads(json.dumps(config.to_dict(), sort_keys=True))
    ignore = SETTINGS_THAT_DO_NOT_CHANGE_WEIGHTS
    return {k: v for k, v in stored.items() if k not in ignore} == {k: v for k, v in current.items() if k not in ignore}


def surrogate_stage(settings: BatSettings, output_dir: Path, resolved: ResolvedInputs) -> StageOutcome:
    """Stage 1: the surrogate LoRA's weights file, trained now, reused, or given by the user."""
    if settings.scoring.surrogate_lora is not None:
        return StageOutcome("given", lora_weights_file(settings.scoring.surrogate_lora, what="surrogate LoRA"))
    config = surrogate_config(settings, output_dir)
    folder = Path(config.output_dir)
    weights = folder / LORA_WEIGHTS_NAME
    if weights.is_file() and _same_settings(folder / RESOLVED_CONFIG_NAME, config):
        logger.info("Stage 1/5: reusing the surrogate LoRA in %s (same settings).", folder)
        return StageOutcome("reused", weights)
    logger.info("Stage 1/5: training the surrogate LoRA for %d steps on the subject.", settings.bat.surrogate_steps)
    result = run_dreambooth(config, resolved=resolved, description="surrogate")
    return StageOutcome("resumed" if result.resumed_from else "ran", weights)


def scoring_stage(settings: BatSettings, surrogate: Path | None, resolved: ResolvedInputs) -> StageOutcome:
    """Stage 2: ALBAT scores (or CLIP similarities) of every candidate, in ``output_dir/selection.jsonl``."""
    scoring = settings.scoring
    if surrogate is None:
        logger.info("Stage 2/5: ranking backbone candidates by CLIP similarity to the subject (%s).",
                    settings.selection.clip_model)
    else:
        logger.info("Stage 2/5: scoring backbone candidates with ALBAT (K=%d, %s).", scoring.num_score_timesteps,
                    scoring.curvature)
    result = run_scoring(settings.score_settings(surrogate), resolved=resolved)
    report = json.loads(result.report_path.read_text()) if result.report_path.is_file() else {}
    return StageOutcome(result.status, result.manifest_path, report)


def list_candidates(pool: PoolConfig) -> list[ManifestRecord]:
    """Every candidate of the pool without a score (``--selection random`` needs no surrogate).

    Reads the usable shards of the probe that ``check_bat_inputs`` ran (cached), as scoring does.
    """
    usable = probe_shards(pool.backbone_shards, pool.backbone_filter, strict=pool.strict_shards).usable
    reader = ShardReader(
        usable, max_candidates=pool.max_candidates, filters=pool.backbone_filter,
        sample_ratio=pool.candidate_ratio,
    )
    records = [ManifestRecord(s.index, s.key, s.url, s.caption, None) for s in reader]
    logger.info("Listed %d backbone candidates (%s).", len(records), reader.stats.summary())
    return records


def unscored_fingerprint(pool: PoolConfig) -> dict:
    return {
        "scored": False, "shards": list(pool.backbone_shards), "filters": list(pool.backbone_filter),
        "max_candidates": pool.max_candidates, "candidate_ratio": pool.candidate_ratio,
    }


def selection_stage(
    settings: BatSettings, output_dir: Path, scored_manifest: Path | None
) -> tuple[list[ManifestRecord], SelectionResult]:
    """Stage 3: apply the selection rule; write the flags to ``output_dir/selection.jsonl``.

    ``scored_manifest`` is the manifest of stage 2 or ``--selection_manifest``; ``None`` with
    ``--selection random`` lists the pool without scores.
    """
    state = process_state()
    target = output_dir / SELECTION_MANIFEST_NAME
    if scored_manifest is not None:
        records = read_manifest(scored_manifest)
        meta = meta_path(scored_manifest)
        fp = json.loads(meta.read_text()) if meta.is_file() else {"source": str(scored_manifest)}
    else:
        records = list_candidates(settings.pool) if state.is_main_process else []
        fp = unscored_fingerprint(settings.pool)
    if state.num_processes > 1:
        records = broadcast_object_list([records], from_process=0)[0]
    result = settings.selection.rule(settings.seed).select(records)
    if result.message:
        logger.warning(result.message)
    records = apply_selection(records, result)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(records, target, fingerprint=fp)
    state.wait_for_everyone()
    return records, result
