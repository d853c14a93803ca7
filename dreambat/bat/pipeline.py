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
import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import preemption
from ..albat import read_manifest, score_statistics
from ..constants import BAT_REPORT_NAME, RESOLVED_CONFIG_NAME, SELECTION_MANIFEST_NAME
from ..data.embeddings import check_embeddings
from ..data.shard_probe import ShardProbe, shared_shard_probe
from ..errors import ConfigError, DataError
from ..files import atomic_write_text
from ..inputs import ResolvedInputs
from ..launch import process_state
from ..lora import lora_weights_file
from ..reuse import apply_run_folder_plan, plan_run_folder
from ..runlock import run_lock
from ..timing import Timer
from ..training.dreambooth import run_dreambooth
from ..training.setup import check_training_inputs
from .backbone_data import SelectedBackboneDataset
from .config import BatSettings
from .report import bat_model_card_section, build_report
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


@dataclass(frozen=True)
class CheckedInputs:
    """What :func:`check_bat_inputs` settled: the resolved inputs, the given surrogate's weights file,
    and the probe of the backbone shards (``None`` when the run reads no shard)."""

    resolved: ResolvedInputs
    surrogate: Path | None
    shards: ShardProbe | None


def check_bat_inputs(settings: BatSettings) -> CheckedInputs:
    """Everything that can be checked before a model loads, each once."""
    resolved = check_training_inputs(settings.train)
    shards = None
    if settings.selection.needs.candidates and settings.bat.selection_manifest is None:
        pool = settings.pool  # every process gets the main process's probe
        shards = shared_shard_probe(pool.backbone_shards, pool.backbone_filter, strict=pool.strict_shards)
        if pool.shortlist_embeddings is not None:
            check_embeddings(pool.shortlist_embeddings, pool.shortlist_key_column)
    if settings.bat.selection_manifest is not None:
        check_selection_manifest(settings.bat.selection_manifest, settings)
    surrogate = settings.scoring.surrogate_lora
    return CheckedInputs(resolved, lora_weights_file(surrogate, what="surrogate LoRA") if surrogate else None,
                         shards)


def check_selection_manifest(path: str, settings: BatSettings) -> None:
    """The user's ``--selection_manifest`` must be a manifest, with scores when the rule ranks by them."""
    try:
        records = read_manifest(path)
    except DataError as error:
        raise ConfigError(
            f"--selection_manifest {path} is not a selection manifest: {error} Pass the selection.jsonl "
            "that `dreambat score` or an earlier train_dreambooth_bat.py run wrote."
        ) from None
    if settings.selection.needs.scores is not None and not any(r.has_score for r in records):
        raise ConfigError(
            f"--selection_manifest {path} holds no scores (it lists {len(records)} candidates without "
            f"them, as --selection random writes), and --selection {settings.selection.selection} ranks by "
            "them; pass a scored manifest, or use --selection random."
        )


def run_bat(settings: BatSettings) -> BatResult:
    """Run the BAT stages and write every output of a run (see the README) to ``train.output_dir``.

    The folder is locked for the run (:mod:`dreambat.runlock`): a second run into it is refused
    before it writes anything. A stop signal (:mod:`dreambat.preemption`) ends it at the next safe
    point (a training step, saved as a checkpoint; a scoring batch; a stage boundary) with
    :class:`~dreambat.preemption.Preempted`; the same command with ``--resume_from_checkpoint
    latest`` continues.
    """
    with run_lock(settings.train.output_dir, what="training run"):
        return _run_bat(settings)


def _release_models() -> None:
    """Free a finished stage's models before the next stage loads its own copy: accelerate's hooks
    keep them in reference cycles that only the cyclic collector frees, and at SDXL's size (14 GB in
    fp32) two copies do not fit in 24 GB."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_bat(settings: BatSettings) -> BatResult:
    checked = check_bat_inputs(settings)
    resolved = checked.resolved
    # The surrogate's saved config then compares equal on a rerun without --resolution.
    settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, resolution=resolved.resolution))
    plan = plan_run_folder(settings, resolved, checked.surrogate, settings.bat.overwrite_output_dir)
    train, needs = settings.train, settings.selection.needs
    state = process_state()
    output_dir = Path(train.output_dir)
    if state.is_main_process:  # every check passed: only now is anything written
        apply_run_folder_plan(plan)
        settings.save(output_dir / RESOLVED_CONFIG_NAME)
    state.wait_for_everyone()
    timer = Timer()
    stages: dict[str, str] = {"surrogate": "skipped", "score": "skipped"}

    surrogate_path, scored = None, None
    if settings.needs_surrogate:
        with timer("surrogate"):
            surrogate = surrogate_stage(settings, output_dir, resolved, given=checked.surrogate,
                                        reusable="surrogate" in plan.reusable)
        stages["surrogate"], surrogate_path = surrogate.status, surrogate.path
        _release_models()
        state.wait_for_everyone()
        preemption.check("after stage 1/5 (the surrogate LoRA is saved)", state)
    if settings.needs_scoring:
        with timer("score"):
            scored = scoring_stage(settings, surrogate_path, resolved, checked.shards)
        stages["score"] = scored.run_status
        _release_models()

    records, selection, score_report = [], None, None
    if needs.candidates:
        manifest = Path(settings.bat.selection_manifest) if settings.bat.selection_manifest else None
        with timer("select"):
            records, selection, score_report = selection_stage(settings, output_dir, scored=scored, manifest=manifest,
                                                               shards=checked.shards)
        stages["select"] = "ran"
        logger.info(
            "Stage 3/5: kept %d of %d backbone candidates (%s, %d with Z > 0).",
            selection.kept, len(records), settings.selection.selection, selection.n_positive,
        )
    else:
        stages["select"] = "skipped"
    preemption.check("before stage 4/5 (the scores and the selection are saved)", state)

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
    if needs.candidates:
        result.manifest_path = output_dir / SELECTION_MANIFEST_NAME
    if state.is_main_process:
        result.report = build_report(
            settings, num_processes=state.num_processes, resolution=resolved.resolution, gamma=gamma,
            score_report=score_report, statistics=score_statistics(records) if records else None,
            selection=selection, source_counts=run.source_counts, stages=stages,
            shards=checked.shards.report() if checked.shards else None,
            timings=timer.seconds | {f"train/{k}": v for k, v in run.timings.items()},
        )
        result.report_path = output_dir / BAT_REPORT_NAME
        atomic_write_text(result.report_path, json.dumps(result.report, indent=2, default=str) + "\n")
        logger.info("Stage 5/5: saved the LoRA, samples, model card and report in %s.", output_dir)
    state.wait_for_everyone()
    return result
