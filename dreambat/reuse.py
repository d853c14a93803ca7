"""Can this folder's earlier work be reused? The one module that answers, for every stage.

Each stage's output is identified by a *fingerprint*: the settings and input digests that shape it.
They are all computed here, and compared here:

* the **scores** of a candidate pool (:func:`scores_fingerprint`) live in the manifest's sidecar
  ``selection.jsonl.meta.json`` and in ``score_report.json``; :func:`manifest_status` decides
  whether a scoring run starts anew, resumes an interrupted manifest, or reuses a finished one,
  and refuses a manifest of other settings;
* a **BAT run folder** (:func:`plan_run_folder`) records, per stage, the fingerprint of the
  surrogate (its training settings, the subject photos' digests), the scores (plus the pool and
  the scorer's settings) and the final LoRA (plus the selection rule, γ and the final training
  settings) in ``output_dir/dreambat_run.json``, and compares it with the run about to start,
  before any model loads:

  - nothing in the folder, or the same settings: the stages reuse or resume what is there;
  - only the selection, γ or final-training settings differ: the surrogate and the scores are
    reused (re-selecting is cheap), and the earlier final LoRA and its checkpoints are moved to
    ``output_dir/archive/<time>/`` so that training starts clean and no old checkpoint is resumed;
  - the surrogate or the scores would differ, or the folder holds outputs of unknown settings:
    the run is refused, naming what differs and the two ways out (a new ``--output_dir``, or
    ``--overwrite_output_dir``, which moves the whole earlier run to the archive first).

Nothing is deleted: an archived run can be moved back by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .albat import SIMILARITY, ManifestMismatchError, check_fingerprint, read_manifest
from .constants import (
    BAT_REPORT_NAME,
    CHECKPOINT_PREFIX,
    LORA_WEIGHTS_NAME,
    MODEL_CARD_NAME,
    SCORE_CONFIG_NAME,
    SCORE_REPORT_NAME,
    SELECTION_MANIFEST_NAME,
    SURROGATE_DIR,
    VALIDATION_GRID_NAME,
)
from .data.shards import DEFAULT_MIN_IMAGE_SIZE
from .errors import ConfigError
from .files import atomic_write_text
from .inputs import ResolvedInputs, file_digest
from .scoring.retrieval import IMAGE_QUERY, TEXT_QUERY

if TYPE_CHECKING:
    from .bat.config import BatSettings
    from .scoring.config import PoolConfig, ScoreSettings, SelectionConfig

logger = logging.getLogger(__name__)

RUN_RECORD_NAME = "dreambat_run.json"
ARCHIVE_DIR = "archive"
PART_GLOB = "selection.rank*.jsonl"
# Settings that change no weight and no score: a rerun may differ in them freely.
SETTINGS_THAT_DO_NOT_CHANGE_WEIGHTS = frozenset({
    "resume_from_checkpoint", "report_to", "logging_dir", "dataloader_num_workers", "local_rank",
    "allow_tf32", "num_validation_images", "num_inference_steps", "output_dir", "validation_prompt",
    "validation_steps", "validation_epochs", "checkpointing_steps", "checkpoints_total_limit",
    "strict_shards",  # refuses or skips empty shards, which hold no candidate either way
})
FINAL_OUTPUTS = (LORA_WEIGHTS_NAME, BAT_REPORT_NAME, MODEL_CARD_NAME, VALIDATION_GRID_NAME, "logs")
SCORE_OUTPUTS = (SELECTION_MANIFEST_NAME, SELECTION_MANIFEST_NAME + ".meta.json", SCORE_REPORT_NAME,
                 SCORE_CONFIG_NAME)

ManifestStatus = Literal["new", "partial", "finished"]
MISMATCH_ADVICE = "Use a new --output_dir, or pass --overwrite_manifest to discard it and score again."


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


# Settings that came after run folders were first recorded, at the value that reproduces what
# dreambat did before them: a record leaves them out at that value, so those folders still match.
SETTINGS_ADDED_LATER = {
    "min_image_size": DEFAULT_MIN_IMAGE_SIZE, "min_clip_score": None,  # pool
    "shortlist": None, "shortlist_query": IMAGE_QUERY, "shortlist_prompt": None,  # pool
    "shortlist_embeddings": None, "shortlist_key_column": "key",
    "clip_query": IMAGE_QUERY, "clip_query_prompt": None,  # selection
    "train_text_encoder_ti": False, "train_text_encoder_ti_frac": 0.5, "token_abstraction": "TOK",  # training
    "num_new_tokens_per_abstraction": 2, "initializer_concept": None, "text_encoder_lr": None,
    "crops_coords_top_left_h": 0, "crops_coords_top_left_w": 0,  # inputs (SDXL's micro-conditioning)
    "pretrained_vae_model_name_or_path": None,
}


def recorded(settings: dict) -> dict:
    """``settings`` without those of :data:`SETTINGS_ADDED_LATER` still at their old-behaviour value."""
    return {k: v for k, v in settings.items() if not (k in SETTINGS_ADDED_LATER and SETTINGS_ADDED_LATER[k] == v)}


def weights_settings(config: Any) -> dict:
    """A training config's settings that shape its weights (those a rerun may not change), as recorded."""
    return recorded({k: v for k, v in dataclasses.asdict(config).items() if k not in SETTINGS_THAT_DO_NOT_CHANGE_WEIGHTS})


def _pool_settings(pool: PoolConfig, selection: SelectionConfig) -> dict:
    """The pool's settings in a run record."""
    return weights_settings(pool) | _filter_model(pool, selection)


def _filter_model(pool: PoolConfig, selection: SelectionConfig) -> dict:
    """The encoder of the caption–image filter and of the shortlist, when either is on (what they
    keep depends on it)."""
    if pool.min_clip_score is None and pool.shortlist is None:
        return {}
    return {"clip_model": selection.clip_model, "clip_pretrained": selection.clip_pretrained}


def _pool_fingerprint(pool: PoolConfig, selection: SelectionConfig) -> dict:
    fingerprint = {"shards": list(pool.backbone_shards), "filters": list(pool.backbone_filter),
                   "max_candidates": pool.max_candidates, "candidate_ratio": pool.candidate_ratio}
    fingerprint |= recorded({name: getattr(pool, name) for name in ("min_image_size", "min_clip_score", "shortlist",
                                                                     "shortlist_query", "shortlist_prompt",
                                                                     "shortlist_embeddings", "shortlist_key_column")})
    return fingerprint | {f"filter_{k}": v for k, v in _filter_model(pool, selection).items()}


# ---------------------------------------------------------------------------------------------
# The scores of a pool: the manifest's own fingerprint.


def scores_fingerprint(settings: ScoreSettings, resolved: ResolvedInputs, surrogate: Path | None) -> dict:
    """Everything a manifest's scores depend on; it is resumed or reused only under the same one.

    Influence scores depend on the backbone, the surrogate's weights, the subject, the pool, the
    resolution and the estimator; similarity scores on the encoder, the query and the pool, and
    on the subject when it is the query (``--clip_query image``).
    """
    pool = _pool_fingerprint(settings.pool, settings.selection)
    if settings.scores == SIMILARITY:
        selection = settings.selection
        by_subject = selection.clip_query != TEXT_QUERY or (
            settings.pool.shortlist is not None and settings.pool.shortlist_query != TEXT_QUERY)
        subject = {"subject_sha256": resolved.subject_digests} if by_subject else {}
        return {"scores": "clip", **_similarity_scorer(selection), **subject, **pool}
    return {
        "backbone": str(settings.inputs.pretrained_model_name_or_path),
        **recorded({"pretrained_vae_model_name_or_path": settings.inputs.pretrained_vae_model_name_or_path}),
        "surrogate_sha256": file_digest(surrogate),
        "subject_sha256": resolved.subject_digests,
        "instance_prompt": settings.inputs.instance_prompt,
        **pool,
        "resolution": resolved.resolution,
        **recorded({name: getattr(settings.inputs, name)
                    for name in ("crops_coords_top_left_h", "crops_coords_top_left_w")}),
        **settings.scoring.estimator(),
    }


def _similarity_scorer(selection: SelectionConfig) -> dict:
    """The encoder and the query of similarity scores (the image query adds no key, see :func:`recorded`)."""
    return {"clip_model": selection.clip_model, "clip_pretrained": selection.clip_pretrained} | recorded(
        {"clip_query": selection.clip_query, "clip_query_prompt": selection.clip_query_prompt})


def unscored_fingerprint(pool: PoolConfig, selection: SelectionConfig) -> dict:
    """The fingerprint of a pool listed without scores (``--selection random`` from scratch)."""
    return {"scored": False, **_pool_fingerprint(pool, selection)}


def manifest_status(output_dir: Path, fp: dict) -> ManifestStatus:
    """``new`` (nothing to resume), ``partial`` (resume it) or ``finished`` (reuse it, nothing to score).

    Raises:
        ManifestMismatchError: the folder holds a manifest, or part manifests, of other settings.
    """
    manifest = output_dir / SELECTION_MANIFEST_NAME
    parts = sorted(output_dir.glob(PART_GLOB))
    for path in [manifest, *parts]:
        try:
            check_fingerprint(path, fp)
        except ManifestMismatchError as error:
            raise ManifestMismatchError(f"{error} {MISMATCH_ADVICE}", error.fields, error.path) from None
    if parts:
        return "partial"
    if not (manifest.is_file() and manifest.stat().st_size):
        return "new"
    return "finished" if finished_report(output_dir, fp, len(read_manifest(manifest))) is not None else "partial"


def finished_report(output_dir: Path, fp: dict, num_records: int) -> dict | None:
    """The report of a run that finished with this fingerprint and wrote ``num_records`` records, else None."""
    try:
        report = json.loads((output_dir / SCORE_REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    if report.get("fingerprint") != _json(fp) or report.get("manifest_records") != num_records:
        return None
    return report


# ---------------------------------------------------------------------------------------------
# A BAT run folder: one record of every stage's fingerprint, compared before any model loads.


def stage_fingerprints(settings: BatSettings, resolved: ResolvedInputs, surrogate_given: Path | None) -> dict[str, dict]:
    """What shapes each stage's output (JSON-ready): ``surrogate``, ``scores``, ``final``.

    ``surrogate_given``: the weights file of ``--surrogate_lora``, if the user gave one.
    """
    inputs = {"backbone": str(resolved.backbone_path), "subject_sha256": resolved.subject_digests,
              "resolution": resolved.resolution}
    surrogate = inputs | (
        {"surrogate_lora_sha256": file_digest(surrogate_given)} if surrogate_given else
        {"train": weights_settings(settings.surrogate_config(Path(".")))}
    )
    method = settings.selection
    scorer = (_similarity_scorer(method) if method.needs.scores == SIMILARITY
              else {"estimator": settings.scoring.estimator()})
    scores = (surrogate if settings.needs_surrogate else inputs) | {"pool": _pool_settings(settings.pool, settings.selection)} | scorer
    if settings.bat.selection_manifest:
        scores = inputs | {"selection_manifest_sha256": file_digest(settings.bat.selection_manifest)}
    final = scores | {"train": weights_settings(settings.train), "selection": recorded(dataclasses.asdict(settings.selection)),
                      "gamma": settings.gamma}
    record = {"final": _json(final)}
    if settings.needs_surrogate:
        record["surrogate"] = _json(surrogate)
    if method.needs.candidates:
        record["scores"] = _json(scores)
    return record


@dataclass
class RunFolderPlan:
    """What :func:`apply_run_folder_plan` will do before the stages start.

    Attributes:
        reusable: stages whose earlier outputs are in the folder and were made with this run's
            settings (``surrogate``, ``scores``): a finished one is reused, an unfinished one resumed.
    """

    output_dir: Path
    record: dict[str, dict]
    archive: list[Path] = field(default_factory=list)
    reason: str | None = None
    reusable: frozenset[str] = frozenset()


def _final_outputs(output_dir: Path) -> list[Path]:
    found = [output_dir / name for name in FINAL_OUTPUTS if (output_dir / name).exists()]
    return found + sorted(p for p in output_dir.glob(CHECKPOINT_PREFIX + "*") if p.is_dir())


def _score_outputs(output_dir: Path) -> list[Path]:
    found = [output_dir / name for name in SCORE_OUTPUTS if (output_dir / name).exists()]
    return found + sorted(output_dir.glob("selection.rank*.jsonl*"))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(old.keys() | new.keys())
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: {json.dumps(old, default=str)[:60]} -> {json.dumps(new, default=str)[:60]}"]


def plan_run_folder(
    settings: BatSettings, resolved: ResolvedInputs, surrogate_given: Path | None, overwrite: bool
) -> RunFolderPlan:
    """Compare the folder's earlier run with this one (see the module docstring); raises ``ConfigError``
    before anything is written when the run would mix with an earlier one."""
    output_dir = Path(settings.train.output_dir)
    plan = RunFolderPlan(output_dir, stage_fingerprints(settings, resolved, surrogate_given))
    surrogate_dir = output_dir / SURROGATE_DIR
    earlier = {
        "surrogate": [surrogate_dir] if surrogate_dir.is_dir() and any(surrogate_dir.iterdir()) else [],
        "scores": _score_outputs(output_dir),
        "final": _final_outputs(output_dir),
    }
    everything = [p for paths in earlier.values() for p in paths]
    if not everything:
        return plan
    if overwrite:
        plan.archive, plan.reason = everything, "--overwrite_output_dir"
        return plan
    try:
        previous = json.loads((output_dir / RUN_RECORD_NAME).read_text())
    except (OSError, ValueError):
        previous = None
    if previous is None:
        raise ConfigError(
            f"--output_dir {output_dir} holds the outputs of an earlier run whose settings are unknown (no "
            f"{RUN_RECORD_NAME}: {', '.join(p.name for p in everything[:5])}). Use a new --output_dir, or pass "
            f"--overwrite_output_dir to move that run to {output_dir / ARCHIVE_DIR}/ first."
        )
    for stage in ("surrogate", "scores"):
        if earlier[stage] and stage in plan.record and previous.get(stage) != plan.record[stage]:
            changes = _differences(previous.get(stage) or {}, plan.record[stage])
            raise ConfigError(
                f"--output_dir {output_dir} holds a run whose {stage} came from other settings "
                f"({'; '.join(changes[:6]) or 'unrecorded'}), so it cannot be reused or resumed. Use a new "
                f"--output_dir, or pass --overwrite_output_dir to move that run to {output_dir / ARCHIVE_DIR}/ "
                "first."
            )
    plan.reusable = frozenset(stage for stage in ("surrogate", "scores") if earlier[stage] and stage in plan.record)
    if earlier["final"] and previous.get("final") != plan.record["final"]:
        resume = settings.train.resume_from_checkpoint
        if resume not in (None, "latest"):
            raise ConfigError(
                f"--resume_from_checkpoint {resume}: that training ran with other settings "
                f"({'; '.join(_differences(previous.get('final') or {}, plan.record['final'])[:6])}); resume "
                "with the same settings, or drop the flag to train anew."
            )
        plan.archive = earlier["final"]
        plan.reason = "; ".join(_differences(previous.get("final") or {}, plan.record["final"])[:6])
    return plan


def apply_run_folder_plan(plan: RunFolderPlan) -> None:
    """Main process: archive what the plan says, then record this run's fingerprints."""
    if plan.archive:
        target = plan.output_dir / ARCHIVE_DIR / time.strftime("%Y%m%d-%H%M%S")
        target.mkdir(parents=True, exist_ok=True)
        for path in plan.archive:
            shutil.move(str(path), target / path.name)
        logger.warning(
            "Moved the earlier run's %s to %s (%s): this run starts those stages clean.",
            ", ".join(p.name for p in plan.archive), target, plan.reason,
        )
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.output_dir / RUN_RECORD_NAME, json.dumps(plan.record, indent=2, sort_keys=True) + "\n")
