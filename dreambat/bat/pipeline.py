"""A complete BAT run (SPEC section 2): checks, surrogate, scoring, selection, final training, report.

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
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..albat.run import surrogate_weights_file
from ..albat.selection import score_statistics
from ..config import TrainConfig
from ..constants import BAT_REPORT_NAME, RESOLVED_CONFIG_NAME, SELECTION_MANIFEST_NAME
from ..data.shards import check_shards_exist
from ..launch import process_state
from ..training.dreambooth import run_dreambooth
from ..training.setup import check_inputs as check_training_inputs
from ..training.setup import native_resolution
from .backbone_data import SelectedBackboneDataset
from .config import BatConfig, check_combination, run_config, save_run_config
from .report import bat_model_card_section, build_report
from .stages import score_config, scoring_stage, selection_stage, surrogate_stage

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


def check_inputs(train: TrainConfig, bat: BatConfig) -> Path:
    """Everything that can be checked before a model loads; returns the backbone folder."""
    check_combination(train, bat)
    backbone = check_training_inputs(train)
    if bat.backbone_shards and bat.selection != "none" and bat.selection_manifest is None:
        check_shards_exist(bat.backbone_shards)
    if bat.surrogate_lora is not None:
        surrogate_weights_file(bat.surrogate_lora)
    return Path(backbone)


def run_bat(train: TrainConfig, bat: BatConfig) -> BatResult:
    """Run the five BAT stages and write every output of SPEC section 5 to ``train.output_dir``."""
    backbone_path = check_inputs(train, bat)
    state = process_state()
    output_dir = Path(train.output_dir)
    resolution = train.resolution or native_resolution(backbone_path)
    train = dataclasses.replace(train, resolution=resolution)  # the surrogate's saved config compares equal on rerun
    seed = train.seed or 0
    if state.is_main_process:
        save_run_config(output_dir / RESOLVED_CONFIG_NAME, train, bat)
    timings: dict[str, float] = {}
    stages: dict[str, str] = {}

    scored_manifest: Path | None = Path(bat.selection_manifest) if bat.selection_manifest else None
    score_report: dict | None = None
    if bat.needs_surrogate:
        started = time.perf_counter()
        surrogate = surrogate_stage(train, bat, output_dir)
        timings["surrogate"], stages["surrogate"] = time.perf_counter() - started, surrogate.status
        state.wait_for_everyone()
        started = time.perf_counter()
        scoring = scoring_stage(score_config(train, bat, surrogate.path, output_dir, resolution), resolution)
        timings["score"], stages["score"] = time.perf_counter() - started, scoring.status
        scored_manifest, score_report = scoring.path, scoring.report
    else:
        stages["surrogate"] = stages["score"] = "skipped"

    records, selection = [], None
    if bat.selection != "none":
        started = time.perf_counter()
        records, selection = selection_stage(bat, seed, output_dir, scored_manifest)
        timings["select"], stages["select"] = time.perf_counter() - started, "ran"
        logger.info(
            "Stage 4/5: kept %d of %d backbone candidates (%s, %d with Z > 0).",
            selection.kept, len(records), bat.selection, selection.n_positive,
        )
    else:
        stages["select"] = "skipped"

    started = time.perf_counter()
    backbone_data = SelectedBackboneDataset(records, resolution) if selection and selection.kept else None
    gamma = bat.gamma if backbone_data is not None else 0.0
    if bat.gamma and backbone_data is None:
        logger.warning("No backbone candidate was selected: the final LoRA trains on the subject alone (γ = 0).")
    timings["load_backbone_samples"] = time.perf_counter() - started
    started = time.perf_counter()
    logger.info("Stage 5/5: training the final LoRA (γ = %.2f).", gamma)
    run = run_dreambooth(
        train, backbone_data=backbone_data, gamma=gamma, description="train",
        model_card_sections={"Backbone Augmented Training": bat_model_card_section(bat, selection, len(records), gamma)},
        resolved_config=run_config(train, bat),
    )
    timings["train"], stages["train"] = time.perf_counter() - started, "resumed" if run.resumed_from else "ran"

    result = BatResult(output_dir=output_dir, lora_path=run.lora_path, grid_path=run.grid_path)
    if bat.selection != "none":
        result.manifest_path = output_dir / SELECTION_MANIFEST_NAME
    if state.is_main_process:
        result.report = build_report(
            train, bat, num_processes=state.num_processes, resolution=resolution, gamma=gamma,
            score_report=score_report, statistics=score_statistics(records) if records else None,
            selection=selection, source_counts=run.source_counts, stages=stages,
            timings=timings | {f"train/{k}": v for k, v in run.timings.items()},
        )
        result.report_path = output_dir / BAT_REPORT_NAME
        result.report_path.write_text(json.dumps(result.report, indent=2, default=str) + "\n")
    state.wait_for_everyone()
    return result
