"""Stages 2-4 of a BAT run, each reusable from an earlier (possibly interrupted) run.

* :func:`surrogate_stage` trains the surrogate LoRA into ``output_dir/surrogate`` (or takes the
  one given), and reuses a finished surrogate trained with the same settings.
* :func:`scoring_stage` scores the backbone candidates with ALBAT into ``output_dir/selection.jsonl``
  (resuming an interrupted manifest; skipped when a finished one has the same fingerprint).
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

from ..albat.config import ScoreConfig
from ..albat.manifest import ManifestMismatchError, ManifestRecord, check_fingerprint, meta_path, read_manifest, write_manifest
from ..albat.run import SCORE_REPORT_NAME, fingerprint, run_scoring, surrogate_weights_file
from ..albat.selection import SelectionResult, apply_selection, get_rule
from ..config import TrainConfig
from ..constants import LORA_WEIGHTS_NAME, RESOLVED_CONFIG_NAME, SELECTION_MANIFEST_NAME
from ..data.shards import ShardReader
from ..data.subject import list_subject_images
from ..launch import process_state
from ..training.dreambooth import run_dreambooth
from .config import BatConfig

logger = logging.getLogger(__name__)

SURROGATE_DIR = "surrogate"
# A finished surrogate is reused when every other training setting is the same.
SETTINGS_THAT_DO_NOT_CHANGE_WEIGHTS = frozenset({
    "resume_from_checkpoint", "report_to", "logging_dir", "dataloader_num_workers", "local_rank",
    "allow_tf32", "num_validation_images", "num_inference_steps", "output_dir",
})


@dataclass
class StageOutcome:
    """How a stage ended: ``ran``, ``resumed``, ``reused`` (finished earlier), ``given`` or ``skipped``."""

    status: str
    path: Path | None = None
    report: dict | None = None


def _training_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def surrogate_config(train: TrainConfig, bat: BatConfig, output_dir: Path) -> TrainConfig:
    """The stage-2 run: the same DreamBooth settings on the subject alone, ``surrogate_steps`` long.

    No validation, no prior preservation (the surrogate defines the *adaptation* loss), checkpoints
    only for resuming an interrupted surrogate.
    """
    changes = {
        "output_dir": str(output_dir / SURROGATE_DIR),
        "max_train_steps": bat.surrogate_steps,
        "validation_prompt": None,
        "validation_steps": None,
        "validation_epochs": None,
        "with_prior_preservation": False,
        "class_data_dir": None,
        "class_prompt": None,
        "resume_from_checkpoint": "latest",
        "checkpointing_steps": max(bat.surrogate_steps // 4, 1),
        "checkpoints_total_limit": 1,
    }
    return dataclasses.replace(train, **{k: v for k, v in changes.items() if k in _training_fields()})


def _same_settings(saved: Path, config: TrainConfig) -> bool:
    try:
        stored = json.loads(saved.read_text())
    except (OSError, ValueError):
        return False
    current = json.loads(json.dumps(config.to_dict(), sort_keys=True))
    ignore = SETTINGS_THAT_DO_NOT_CHANGE_WEIGHTS
    return {k: v for k, v in stored.items() if k not in ignore} == {k: v for k, v in current.items() if k not in ignore}


def surrogate_stage(train: TrainConfig, bat: BatConfig, output_dir: Path) -> StageOutcome:
    """Stage 2: the surrogate LoRA's weights file, trained now, reused, or given by the user."""
    if bat.surrogate_lora is not None:
        return StageOutcome("given", surrogate_weights_file(bat.surrogate_lora))
    config = surrogate_config(train, bat, output_dir)
    folder = Path(config.output_dir)
    weights = folder / LORA_WEIGHTS_NAME
    if weights.is_file() and _same_settings(folder / RESOLVED_CONFIG_NAME, config):
        logger.info("Stage 2/5: reusing the surrogate LoRA in %s (same settings).", folder)
        return StageOutcome("reused", weights)
    logger.info("Stage 2/5: training the surrogate LoRA for %d steps on the subject.", bat.surrogate_steps)
    result = run_dreambooth(config, description="surrogate")
    status = "resumed" if getattr(result, "resumed_from", None) else "ran"
    return StageOutcome(status, weights)


def score_config(train: TrainConfig, bat: BatConfig, surrogate: Path, output_dir: Path, resolution: int) -> ScoreConfig:
    """The stage-3 scoring settings derived from the run's flags."""
    return ScoreConfig(
        pretrained_model_name_or_path=train.pretrained_model_name_or_path,
        surrogate_lora=str(surrogate),
        instance_data_dir=train.instance_data_dir,
        instance_prompt=train.instance_prompt,
        backbone_shards=list(bat.backbone_shards),
        output_dir=str(output_dir),
        revision=train.revision,
        variant=train.variant,
        resolution=resolution,
        num_score_timesteps=bat.num_score_timesteps,
        curvature=bat.curvature,
        damping=bat.damping,
        score_batch_size=bat.score_batch_size,
        max_candidates=bat.max_candidates,
        candidate_ratio=bat.candidate_ratio,
        backbone_filter=list(bat.backbone_filter),
        selection="albat",
        num_backbone_samples=bat.num_backbone_samples,
        score_threshold=bat.score_threshold,
        backbone_fraction=bat.backbone_fraction,
        keep_nonpositive=bat.keep_nonpositive,
        seed=train.seed or 0,
        overwrite_manifest=bat.overwrite_manifest,
    )


def scoring_finished(config: ScoreConfig, resolution: int) -> bool:
    """True when ``output_dir`` holds a finished manifest scored with exactly these settings."""
    output_dir = Path(config.output_dir)
    manifest = output_dir / SELECTION_MANIFEST_NAME
    if not (manifest.is_file() and (output_dir / SCORE_REPORT_NAME).is_file() and meta_path(manifest).is_file()):
        return False
    if any(output_dir.glob("selection.rank*.jsonl")):
        return False  # an interrupted later run left its parts: resume it
    fp = fingerprint(config, Path(config.surrogate_lora), list_subject_images(config.instance_data_dir), resolution)
    try:
        check_fingerprint(manifest, fp)
    except ManifestMismatchError:
        return False
    return True


def scoring_stage(config: ScoreConfig, resolution: int) -> StageOutcome:
    """Stage 3: ALBAT scores of every candidate, in ``output_dir/selection.jsonl``."""
    state = process_state()
    finished = scoring_finished(config, resolution)
    state.wait_for_everyone()
    report_path = Path(config.output_dir) / SCORE_REPORT_NAME
    if finished:
        logger.info("Stage 3/5: reusing the finished manifest in %s (same settings; nothing rescored).", config.output_dir)
        return StageOutcome("reused", Path(config.output_dir) / SELECTION_MANIFEST_NAME, json.loads(report_path.read_text()))
    logger.info("Stage 3/5: scoring backbone candidates with ALBAT (K=%d, %s).", config.num_score_timesteps, config.curvature)
    result = run_scoring(config)
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    status = "resumed" if report.get("counts", {}).get("resumed") else "ran"
    return StageOutcome(status, result.manifest_path, report)


def list_candidates(bat: BatConfig) -> list[ManifestRecord]:
    """Every candidate of the pool without a score (``--selection random`` needs no surrogate)."""
    reader = ShardReader(
        bat.backbone_shards, max_candidates=bat.max_candidates, filters=bat.backbone_filter,
        sample_ratio=bat.candidate_ratio,
    )
    records = [ManifestRecord(s.index, s.key, s.url, s.caption, None) for s in reader]
    logger.info("Listed %d backbone candidates (%s).", len(records), reader.stats.summary())
    return records


def unscored_fingerprint(bat: BatConfig) -> dict:
    return {
        "scored": False, "shards": list(bat.backbone_shards), "filters": list(bat.backbone_filter),
        "max_candidates": bat.max_candidates, "candidate_ratio": bat.candidate_ratio,
    }


def selection_stage(
    bat: BatConfig, seed: int, output_dir: Path, scored_manifest: Path | None
) -> tuple[list[ManifestRecord], SelectionResult]:
    """Stage 4: apply the selection rule; write the flags to ``output_dir/selection.jsonl``.

    ``scored_manifest`` is the manifest of stage 3 or ``--selection_manifest``; ``None`` with
    ``--selection random`` lists the pool without scores.
    """
    state = process_state()
    target = output_dir / SELECTION_MANIFEST_NAME
    if scored_manifest is not None:
        records = read_manifest(scored_manifest)
        meta = meta_path(scored_manifest)
        fp = json.loads(meta.read_text()) if meta.is_file() else {"source": str(scored_manifest)}
    else:
        records = list_candidates(bat) if state.is_main_process else []
        fp = unscored_fingerprint(bat)
    if state.num_processes > 1:
        import torch.distributed as dist

        holder = [records]
        dist.broadcast_object_list(holder, src=0)
        records = holder[0]
    rule = get_rule(bat.selection, **bat.keep_rule(seed))
    result = rule.select(records)
    if result.message:
        logger.warning(result.message)
    records = apply_selection(records, result)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(records, target, fingerprint=fp)
    state.wait_for_everyone()
    return records, result
