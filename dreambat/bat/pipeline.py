"""A complete BAT run: checks, then the five stages of the README (surrogate, score, select, train,
save) and the report.

Launched like diffusers' DreamBooth script (``accelerate launch train_dreambooth_bat.py ...``).
Every process runs :func:`run_bat`; training and scoring split the work across them, and only
the main process writes shared files. Each stage reuses what an earlier run in the same
``output_dir`` finished, so a crash in the final training repeats neither the surrogate nor
the scoring; ``--resume_from_checkpoint latest`` continues the final training itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..albat.selection import score_statistics
from ..constants import BAT_REPORT_NAME, RESOLVED_CONFIG_NAME, SELECTION_MANIFEST_NAME
from ..albat.manifest import read_manifest
from ..data.shard_probe import ShardProbe, shared_shard_probe
from ..errors import ConfigError, DataError
from ..inputs import ResolvedInputs
from ..launch import process_state
from ..lora import lora_weights_file
from ..timing import Timer
from ..training.dreambooth import run_dreambooth
from ..training.setup import check_training_inputs
from .backbone_data import SelectedBackboneDataset
from .config import BatSettings
from .report import bat_model_card_section, build_report
from .run_folder import apply_run_folder_plan, plan_run_folder
from .stages import scoring_stage, selection_stage, surrogate_stage

logger = logging.getLogger(__name__)


@dataclass
class BatResult:
    """Where a BAT run wrote its outputs, and its report."""

    output_dir: Path
    lora_path: Path | None = None
    manifest_path: Path | None = None
    report_path: Path | None = None
    grid_path: Path | None = None
    report: dict = field(default_factory=dict)


def check_bat_inputs(settings: BatSettings) -> ResolvedInputs:
    """Everything that can be checked before a model loads; returns the resolved inputs."""
    resolved = check_training_inputs(settings.train)
    probe_pool(settings)
    if settings.bat.selection_manifest is not None:
        check_selection_manifest(settings.bat.selection_manifest, settings.selection.selection)
    if settings.scoring.surrogate_lora is not None:
        lora_weights_file(settings.scoring.surrogate_lora, what="surrogate LoRA")
    return resolved


def probe_pool(settings: BatSettings) -> ShardProbe | None:
    """The probe of the run's backbone shards (the main process's, on every process; computed once per
    process, so calling it again is free); ``None`` when the run reads no shard."""
    pool = settings.pool
    if settings.selection.selection == "none" or settings.bat.selection_manifest is not None:
        return None
    return shared_shard_probe(pool.backbone_shards, pool.backbone_filter, strict=pool.strict_shards)


def check_selection_manifest(path: str, selection: str) -> None:
    """The user's ``--selection_manifest`` must be a manifest, with scores when ALBAT selects from it."""
    try:
        records = read_manifest(path)
    except DataError as error:
        raise ConfigError(
            f"--selection_manifest {path} is not a selection manifest: {error} Pass the selection.jsonl "
            "that `dreambat score` or an earlier train_dreambooth_bat.py run wrote."
        ) from None
    if selection == "albat" and not any(r.has_score for r in records):
        raise ConfigError(
            f"--selection_manifest {path} holds no ALBAT scores (it lists {len(records)} candidates without "
            "them, as --selection random writes); pass a scored manifest, or use --selection random."
        )


def run_bat(settings: BatSettings) -> BatResult:
    """Run the BAT stages and write every output of a run (see the README) to ``train.output_dir``."""
    resolved = check_bat_inputs(settings)
    shards = probe_pool(settings)  # the probe check_bat_inputs ran, for the report
    # The surrogate's saved config then compares equal on a rerun without --resolution.
    settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, resolution=resolved.resolution))
    plan = plan_run_folder(settings, resolved, settings.bat.overwrite_output_dir)
    train, selection_flags = settings.train, settings.selection
    state = process_state()
    output_dir = Path(train.output_dir)
    if state.is_main_process:  # every check passed: only now is anything written
        apply_run_folder_plan(plan)
        settings.save(output_dir / RESOLVED_CONFIG_NAME)
    state.wait_for_everyone()
    timer = Timer()
    stages: dict[str, str] = {}

    scored_manifest = Path(settings.bat.selection_manifest) if settings.bat.selection_manifest else None
    score_report: dict | None = None
    stages["surrogate"] = stages["score"] = "skipped"
    surrogate_path = None
    if settings.needs_surrogate:
        with timer("surrogate"):
            surrogate = surrogate_stage(settings, output_dir, resolved)
        stages["surrogate"], surrogate_path = surrogate.status, surrogate.path
        state.wait_for_everyone()
    if settings.needs_scoring:
        with timer("score"):
            scoring = scoring_stage(settings, surrogate_path, resolved)
        stages["score"] = scoring.status
        scored_manifest, score_report = scoring.path, scoring.report

    records, selection = [], None
    if selection_flags.selection != "none":
        with timer("select"):
            records, selection = selection_stage(settings, output_dir, scored_manifest)
        stages["select"] = "ran"
        logger.info(
            "Stage 3/5: kept %d of %d backbone candidates (%s, %d with Z > 0).",
            selection.kept, len(records), selection_flags.selection, selection.n_positive,
        )
    else:
        stages["select"] = "skipped"

    with timer("load_backbone_samples"):
        backbone_data = SelectedBackboneDataset(records, resolved.resolution) if selection and selection.kept else None
    gamma = settings.gamma if backbone_data is not None else 0.0
    if settings.gamma and backbone_data is None:
        logger.warning("No backbone candidate was selected: the final LoRA trains on the subject alone (γ = 0).")
    logger.info("Stage 4/5: training the final LoRA (γ = %.2f).", gamma)
    with timer("train"):
        run = run_dreambooth(
            train, resolved=resolved, backbone_data=backbone_data, gamma=gamma, description="train",
            model_card_sections={
                "Backbone Augmented Training": bat_model_card_section(
                    settings, selection, len(records), gamma, (score_report or {}).get("reliability"))
            },
            resolved_config=settings.to_dict(),
        )
    stages["train"] = "resumed" if run.resumed_from else "ran"

    result = BatResult(output_dir=output_dir, lora_path=run.lora_path, grid_path=run.grid_path)
    if selection_flags.selection != "none":
        result.manifest_path = output_dir / SELECTION_MANIFEST_NAME
    if state.is_main_process:
        result.report = build_report(
            settings, num_processes=state.num_processes, resolution=resolved.resolution, gamma=gamma,
            score_report=score_report, statistics=score_statistics(records) if records else None,
            selection=selection, source_counts=run.source_counts, stages=stages,
            shards=shards.report() if shards else None,
            timings=timer.seconds | {f"train/{k}": v for k, v in run.timings.items()},
        )
        result.report_path = output_dir / BAT_REPORT_NAME
        result.report_path.write_text(json.dumps(result.report, indent=2, default=str) + "\n")
        logger.info("Stage 5/5: saved the LoRA, samples, model card and report in %s.", output_dir)
    state.wait_for_everyone()
    return result
