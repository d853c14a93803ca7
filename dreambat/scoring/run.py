"""A complete scoring run on a Stable Diffusion backbone: checks, surrogate, reference set, streamed
scores, merge, selection, report.

Launch with several processes (``accelerate launch --multi_gpu --num_processes 2`` or
``torchrun --nproc_per_node 2``) and candidates are split by
:class:`~dreambat.data.shards.ShardReader` (``split_by="sample"``): each process writes its own part
manifest, the main process merges them in candidate order. Scores do not depend on the split,
so the merged manifest equals a single-process one.

Whether the manifest in the output folder is new, an interrupted run to resume, a finished run to
reuse, or a run of other settings to refuse is decided in one place, :func:`manifest_status`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import gather_object

from ..albat.blocks import LoraBlocks
from ..albat.curvature import get_strategy
from ..albat.manifest import (
    ManifestMismatchError,
    ManifestWriter,
    check_fingerprint,
    merge_manifests,
    meta_path,
    read_manifest,
    write_manifest,
)
from ..albat.scorer import AlbatScorer, score_candidates
from ..albat.selection import apply_selection, score_statistics
from ..backbone.load import load_backbone
from ..constants import SCORE_CONFIG_NAME, SCORE_REPORT_NAME, SELECTION_MANIFEST_NAME
from ..data.shard_probe import shared_shard_probe
from ..data.shards import BackboneSample, ShardReader
from ..data.subject import SubjectDataset, collate_subject
from ..data.transforms import ImageTransform
from ..errors import DataError
from ..inputs import ResolvedInputs, file_digest, resolve_inputs
from ..launch import process_state
from ..lora import load_lora, lora_weights_file
from ..timing import Timer
from .config import ScoreSettings
from .diffusion_task import DiffusionLossTask
from .reliability import describe_reliability, reliability_advice, reliability_report
from .retrieval import ClipSimilarity, collate_images, load_clip

logger = logging.getLogger(__name__)

SURROGATE_ADAPTER = "surrogate"
PART_GLOB = "selection.rank*.jsonl"

ManifestStatus = Literal["new", "partial", "finished"]


@dataclass
class ScoringResult:
    """Where the run wrote its manifest and report; ``status`` is ``ran``, ``resumed`` or ``reused``."""

    manifest_path: Path
    report_path: Path
    report: dict
    status: str = "ran"


def fingerprint(settings: ScoreSettings, resolved: ResolvedInputs, surrogate: Path | None) -> dict:
    """Everything a score depends on; a manifest is resumed or reused only under the same fingerprint."""
    pool, scoring, selection = settings.pool, settings.scoring, settings.selection
    if surrogate is None:  # CLIP retrieval
        return {
            "scores": "clip", "clip_model": selection.clip_model, "clip_pretrained": selection.clip_pretrained,
            "subject_sha256": resolved.subject_digests, "shards": list(pool.backbone_shards),
            "filters": list(pool.backbone_filter), "max_candidates": pool.max_candidates,
            "candidate_ratio": pool.candidate_ratio,
        }
    return {
        "backbone": str(settings.inputs.pretrained_model_name_or_path),
        "surrogate_sha256": file_digest(surrogate),
        "subject_sha256": resolved.subject_digests,
        "instance_prompt": settings.inputs.instance_prompt,
        "shards": list(pool.backbone_shards),
        "filters": list(pool.backbone_filter),
        "max_candidates": pool.max_candidates,
        "candidate_ratio": pool.candidate_ratio,
        "resolution": resolved.resolution,
        **scoring.estimator(),
    }


def manifest_status(output_dir: Path, fp: dict) -> ManifestStatus:
    """``new`` (nothing to resume), ``partial`` (resume it) or ``finished`` (reuse it, nothing to score).

    Raises:
        ManifestMismatchError: the folder holds a manifest, or part manifests, of other settings.
    """
    manifest = output_dir / SELECTION_MANIFEST_NAME
    parts = sorted(output_dir.glob(PART_GLOB))
    for path in [manifest, *parts]:
        check_fingerprint(path, fp)
    if parts:
        return "partial"
    if not (manifest.is_file() and manifest.stat().st_size):
        return "new"
    return "finished" if _finished_report(output_dir, fp, len(read_manifest(manifest))) is not None else "partial"


def _finished_report(output_dir: Path, fp: dict, num_records: int) -> dict | None:
    """The report of a run that finished with this fingerprint and wrote ``num_records`` records, else None."""
    try:
        report = json.loads((output_dir / SCORE_REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    if report.get("fingerprint") != json.loads(json.dumps(fp)) or report.get("manifest_records") != num_records:
        return None
    return report


def collate_candidates(samples: Sequence[BackboneSample], transform: ImageTransform) -> dict:
    """Backbone candidates as a task batch: centre-cropped pixels, their own captions, keys."""
    return {
        "pixel_values": torch.stack([transform(s.image) for s in samples]),
        "prompts": [s.caption for s in samples],
        "keys": [s.key for s in samples],
    }


def run_scoring(
    settings: ScoreSettings, *, resolved: ResolvedInputs | None = None, show_progress: bool = True
) -> ScoringResult:
    """Score every candidate of the pool and write the selection manifest and report.

    Writes ``selection.jsonl`` (one line per candidate, ``selected`` set by the rule),
    ``score_report.json`` (settings, counts, the ``shards`` section of
    :meth:`~dreambat.data.shard_probe.ShardProbe.report`, score statistics, curvature, timings) and
    ``score_config.json`` to ``settings.inputs.output_dir``. An interrupted run resumes without
    rescoring finished candidates; a finished run with the same fingerprint is reused (only the
    selection rule is applied again).

    Args:
        settings: the run's setting groups; ``settings.scoring.surrogate_lora`` names the surrogate.
        resolved: :func:`~dreambat.inputs.resolve_inputs` of ``settings.inputs``, if the caller has it.
    """
    resolved = resolved or resolve_inputs(settings.inputs)
    retrieval = settings.selection.selection == "clip"
    surrogate = None if retrieval else lora_weights_file(settings.scoring.surrogate_lora, what="surrogate LoRA")
    pool = settings.pool
    shards = shared_shard_probe(pool.backbone_shards, pool.backbone_filter, strict=pool.strict_shards)
    state = process_state()
    output_dir = Path(settings.inputs.output_dir)
    manifest_path = output_dir / SELECTION_MANIFEST_NAME
    fp = fingerprint(settings, resolved, surrogate)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if settings.scoring.overwrite_manifest:
            for stale in [manifest_path, *output_dir.glob(PART_GLOB)]:
                stale.unlink(missing_ok=True)
                meta_path(stale).unlink(missing_ok=True)
    state.wait_for_everyone()
    try:  # every process checks, so all stop together on a mismatch
        status = manifest_status(output_dir, fp)
    except ManifestMismatchError:
        raise
    except DataError as error:
        raise DataError(f"{error} The scoring output in {output_dir} is damaged: pass --overwrite_manifest to "
                        "discard it and score again, or use a new --output_dir.") from error
    timer = Timer()
    if status == "finished":
        logger.info("Reusing the finished manifest in %s (same settings; nothing rescored).", output_dir)
        earlier = json.loads((output_dir / SCORE_REPORT_NAME).read_text())
        gathered, curvature = None, earlier.get("curvature")
    else:
        if state.is_main_process:
            settings.save(output_dir / SCORE_CONFIG_NAME)
        score = _retrieve if retrieval else _score
        usable = dataclasses.replace(pool, backbone_shards=list(shards.usable))  # no process reads an empty shard
        gathered, curvature = score(dataclasses.replace(settings, pool=usable), resolved, surrogate, fp, timer,
                                    show_progress)

    report: dict = {}
    if state.is_main_process:
        with timer("select"):
            if gathered is None:
                records = read_manifest(manifest_path)
            else:
                parts = sorted(output_dir.glob(PART_GLOB))
                records = merge_manifests(parts + ([manifest_path] if manifest_path.exists() else []),
                                          manifest_path, fingerprint=fp)
                if not records:
                    raise DataError(
                        f"No backbone candidate could be scored from {settings.pool.backbone_shards}: "
                        f"{_sum_counts(g['reader'] for g in gathered)}. Check the shards and --backbone_filter."
                    )
                for stale in parts:
                    stale.unlink()
                    meta_path(stale).unlink(missing_ok=True)
            result = settings.selection.rule(settings.seed).select(records)
            write_manifest(apply_selection(records, result), manifest_path, fingerprint=fp)
            if result.message:
                logger.warning(result.message)
        counts = earlier["counts"] if gathered is None else {
            **_sum_counts(g["reader"] for g in gathered),
            "scored_this_run": sum(g["summary"]["scored"] for g in gathered),
            "resumed": sum(g["summary"]["resumed"] for g in gathered),
            "skipped_nonfinite_loss": sum(g["summary"]["skipped_nonfinite"] for g in gathered),
        }
        report = {
            "settings": settings.to_dict(),
            "fingerprint": fp,
            "manifest_records": len(records),
            "status": "reused" if gathered is None else ("resumed" if counts["resumed"] else "ran"),
            "resolution": resolved.resolution,
            "num_processes": state.num_processes if gathered is not None else earlier.get("num_processes"),
            "counts": {**counts, "selected": result.kept},
            "shards": shards.report(),
            "selection": dataclasses.asdict(result) | {"selected_indices": None},
            "score_statistics": score_statistics(records),
            "reliability": reliability_report(records, settings.scoring),
            "curvature": curvature,
            "timings": (earlier["timings"] if gathered is None else {}) | timer.seconds,
        }
        (output_dir / SCORE_REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
        logger.info(
            "Scored %d candidates (%d resumed), kept %d; %s; manifest: %s",
            len(records), counts.get("resumed", 0), result.kept,
            "CLIP similarity to the subject photos" if retrieval else describe_reliability(report["reliability"]),
            manifest_path,
        )
        advice = reliability_advice(report["reliability"], settings.scoring)
        if advice:
            logger.warning(advice)
    state.wait_for_everyone()
    run_status = "reused" if status == "finished" else ("resumed" if status == "partial" else "ran")
    return ScoringResult(manifest_path, output_dir / SCORE_REPORT_NAME, report, run_status)


def _retrieve(
    settings: ScoreSettings, resolved: ResolvedInputs, surrogate: None, fp: dict, timer: Timer, show_progress: bool
) -> tuple[list[dict], dict]:
    """Embed the subject photos and score this process's candidates by CLIP similarity."""
    state = process_state()
    with timer("load"):
        encoder = load_clip(settings.selection.clip_model, settings.selection.clip_pretrained, state.device)
    with timer("subject_embeddings"):
        scorer = ClipSimilarity(encoder, resolved.subject_images)
    with timer("score"):
        summary, reader = _stream(settings, scorer, collate_images, fp, show_progress)
    return _gather(reader, summary), scorer.describe()


def _stream(settings: ScoreSettings, scorer, collate, fp: dict, show_progress: bool):
    """Score this process's share of the pool into its part manifest (resuming the final one's)."""
    state = process_state()
    pool, output_dir = settings.pool, Path(settings.inputs.output_dir)
    reader = ShardReader(
        pool.backbone_shards, max_candidates=pool.max_candidates, filters=pool.backbone_filter,
        rank=state.process_index, world_size=state.num_processes, sample_ratio=pool.candidate_ratio,
    )
    part = output_dir / f"selection.rank{state.process_index:03d}.jsonl"
    manifest_path = output_dir / SELECTION_MANIFEST_NAME
    with ManifestWriter(part, fingerprint=fp) as writer:
        if manifest_path.exists():
            writer.done_indices.update(r.index for r in read_manifest(manifest_path))
        summary = score_candidates(
            scorer, reader, collate, writer, batch_size=settings.scoring.score_batch_size,
            path=settings.scoring.scoring_path, show_progress=show_progress and state.is_local_main_process,
        )
    return summary, reader


def _gather(reader: ShardReader, summary) -> list[dict]:
    mine = {"reader": reader.stats.as_dict(), "summary": dataclasses.asdict(summary) | {"scores": None}}
    return gather_object([mine]) if process_state().num_processes > 1 else [mine]


def _score(
    settings: ScoreSettings, resolved: ResolvedInputs, surrogate: Path, fp: dict, timer: Timer, show_progress: bool
) -> tuple[list[dict], dict]:
    """Load the backbone with the surrogate, fit the direction, score this process's candidates."""
    state = process_state()
    inputs, scoring = settings.inputs, settings.scoring
    with timer("load"):
        backbone = load_backbone(str(resolved.backbone_path), revision=inputs.revision, variant=inputs.variant)
        for model in (backbone.unet, backbone.vae, backbone.text_encoder):
            model.to(state.device)
        load_lora(surrogate, backbone.unet, backbone.text_encoder, adapter_name=SURROGATE_ADAPTER)
        blocks = LoraBlocks.from_models(backbone.unet, backbone.text_encoder)
        task = DiffusionLossTask(backbone, scoring.candidate_design(), output=scoring.score_output)
        reference_task = DiffusionLossTask(backbone, scoring.reference_design(), output=scoring.score_output)
        subject = SubjectDataset(resolved.subject_images, inputs.instance_prompt, resolved.resolution, center_crop=True)
        n_ref = len(subject) * reference_task.num_terms
        strategy = get_strategy(scoring.curvature, scoring.damping, n_ref=n_ref, max_dim=max(blocks.dims))
        scorer = AlbatScorer(task, blocks, strategy, reference_task=reference_task,
                             normalize_terms=scoring.normalize_timesteps)

    with timer("reference_gradients"):
        # One photo at a time, in chunks of as many UNet rows as a candidate batch: memory stays that
        # of a scoring step however many reference draws there are (the rows themselves are kept).
        rows = scoring.score_batch_size * task.num_terms
        curvature = scorer.fit(chunk for i in range(len(subject))
                               for chunk in reference_task.chunks(collate_subject([subject[i]]), rows))

    with timer("score"):
        transform = ImageTransform(resolved.resolution, center_crop=True)
        summary, reader = _stream(settings, scorer, lambda batch: collate_candidates(batch, transform), fp,
                                  show_progress)
    return _gather(reader, summary), curvature


# With split_by="sample" every process reads every shard: shard counts are per process, not summed.
_PER_PROCESS_SHARD_COUNTS = frozenset({"shards_read", "truncated_shards", "unreadable_shards"})


def _sum_counts(stats) -> dict[str, int]:
    """Candidate counts summed over processes; shard counts as one process saw them (the maximum)."""
    total: dict[str, int] = {}
    for entry in stats:
        for key, value in entry.items():
            combine = max if key in _PER_PROCESS_SHARD_COUNTS else int.__add__
            total[key] = combine(total.get(key, 0), int(value))
    return total
