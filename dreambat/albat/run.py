"""A complete scoring run: checks, surrogate, reference set, streamed scores, merge, selection.

Launch with several processes (``accelerate launch --multi_gpu --num_processes 2`` or
``torchrun --nproc_per_node 2``) and candidates are split by
:class:`~dreambat.data.shards.ShardReader` (``split_by="sample"``): each process writes its own part
manifest, the main process merges them in candidate order. Scores do not depend on the split,
so the merged manifest equals a single-process one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from ..backbone.load import load_backbone, resolve_backbone
from ..constants import LORA_WEIGHTS_NAME, SELECTION_MANIFEST_NAME
from ..data.shards import BackboneSample, ShardReader, check_shards_exist
from ..data.subject import SubjectDataset, collate_subject, list_subject_images
from ..data.transforms import ImageTransform
from ..errors import DataError, ModelNotFoundError
from ..launch import process_state
from ..training.validation import pipeline_from_backbone
from .blocks import LoraBlocks
from .config import ScoreConfig
from .curvature import get_strategy
from .diffusion_task import DiffusionLossTask
from .manifest import ManifestWriter, check_fingerprint, merge_manifests, meta_path, read_manifest, write_manifest
from .scorer import AlbatScorer, score_candidates
from .selection import apply_selection, get_rule, score_statistics

logger = logging.getLogger(__name__)

SCORE_REPORT_NAME = "score_report.json"
SURROGATE_ADAPTER = "surrogate"


@dataclass
class ScoringResult:
    manifest_path: Path
    report_path: Path
    report: dict


def surrogate_weights_file(path: str | Path) -> Path:
    """The surrogate's ``.safetensors`` file, given it or its folder; clear error if missing."""
    path = Path(path)
    file = path / LORA_WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise ModelNotFoundError(
            f"No surrogate LoRA at '{path}': expected {LORA_WEIGHTS_NAME} (the output_dir of a "
            "DreamBooth-LoRA run, e.g. `train_dreambooth_bat.py --selection none --max_train_steps 200`)."
        )
    return file


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def fingerprint(config: ScoreConfig, surrogate: Path, subject_images: Sequence[Path], resolution: int) -> dict:
    """Everything a score depends on; a manifest is resumed only under the same fingerprint."""
    return {
        "backbone": str(config.pretrained_model_name_or_path),
        "surrogate_sha256": _file_digest(surrogate),
        "subject_sha256": [_file_digest(p) for p in subject_images],
        "instance_prompt": config.instance_prompt,
        "shards": list(config.backbone_shards),
        "filters": list(config.backbone_filter),
        "max_candidates": config.max_candidates,
        "candidate_ratio": config.candidate_ratio,
        "resolution": resolution,
        "num_score_timesteps": config.num_score_timesteps,
        "curvature": config.curvature,
        "damping": config.damping,
    }


def collate_candidates(samples: Sequence[BackboneSample], transform: ImageTransform) -> dict:
    """Backbone candidates as a task batch: centre-cropped pixels, their own captions, keys."""
    return {
        "pixel_values": torch.stack([transform(s.image) for s in samples]),
        "prompts": [s.caption for s in samples],
        "keys": [s.key for s in samples],
    }


def _check_inputs(config: ScoreConfig) -> tuple[Path, Path, list[Path]]:
    backbone = resolve_backbone(config.pretrained_model_name_or_path, config.revision)
    surrogate = surrogate_weights_file(config.surrogate_lora)
    images = list_subject_images(config.instance_data_dir)
    if config.backbone_shards:
        check_shards_exist(config.backbone_shards)
    return backbone, surrogate, images


def run_scoring(config: ScoreConfig, *, show_progress: bool = True) -> ScoringResult:
    """Score every candidate of ``config.backbone_shards`` and write the selection manifest.

    Writes ``selection.jsonl`` (one line per candidate, ``selected`` set by the rule) and
    ``score_report.json`` (settings, counts, score statistics, curvature, timings) to
    ``config.output_dir``; an interrupted run resumes without rescoring finished candidates.
    """
    _, surrogate, subject_images = _check_inputs(config)
    state = process_state()
    output_dir = Path(config.output_dir)
    manifest_path = output_dir / SELECTION_MANIFEST_NAME
    timings: dict[str, float] = {}

    started = time.perf_counter()
    backbone = load_backbone(config.pretrained_model_name_or_path, revision=config.revision, variant=config.variant)
    for model in (backbone.unet, backbone.vae, backbone.text_encoder):
        model.to(state.device)
    pipeline_from_backbone(backbone).load_lora_weights(surrogate.parent, weight_name=surrogate.name, adapter_name=SURROGATE_ADAPTER)
    blocks = LoraBlocks.from_models(backbone.unet, backbone.text_encoder)
    resolution = config.resolution or backbone.native_resolution
    task = DiffusionLossTask(backbone, config.num_score_timesteps)
    subject = SubjectDataset(config.instance_data_dir, config.instance_prompt, resolution, center_crop=True)
    n_ref = len(subject) * config.num_score_timesteps
    scorer = AlbatScorer(task, blocks, get_strategy(config.curvature, config.damping, n_ref=n_ref))
    timings["load"] = time.perf_counter() - started

    fp = fingerprint(config, surrogate, subject_images, resolution)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if config.overwrite_manifest:
            for stale in [manifest_path, *output_dir.glob("selection.rank*.jsonl")]:
                stale.unlink(missing_ok=True)
                meta_path(stale).unlink(missing_ok=True)
    state.wait_for_everyone()
    # Every process checks, so all of them stop together on a manifest of other settings.
    check_fingerprint(manifest_path, fp)
    if state.is_main_process:
        config.save(output_dir / "score_config.json")

    started = time.perf_counter()
    reference = [collate_subject([subject[i]]) for i in range(len(subject))]
    curvature = scorer.fit(reference)
    timings["reference_gradients"] = time.perf_counter() - started

    started = time.perf_counter()
    reader = ShardReader(
        config.backbone_shards, max_candidates=config.max_candidates, filters=config.backbone_filter,
        rank=state.process_index, world_size=state.num_processes, sample_ratio=config.candidate_ratio,
    )
    part = output_dir / f"selection.rank{state.process_index:03d}.jsonl"
    transform = ImageTransform(resolution, center_crop=True)
    with ManifestWriter(part, fingerprint=fp) as writer:
        if manifest_path.exists():
            writer.done_indices.update(r.index for r in read_manifest(manifest_path))
        summary = score_candidates(
            scorer, reader, lambda batch: collate_candidates(batch, transform), writer,
            batch_size=config.score_batch_size, path=config.scoring_path,
            show_progress=show_progress and state.is_local_main_process,
        )
    timings["score"] = time.perf_counter() - started
    reader_stats = reader.stats.as_dict()
    gathered = _gather_objects(state, {"reader": reader_stats, "summary": dataclasses.asdict(summary) | {"scores": None}})

    report: dict = {}
    if state.is_main_process:
        started = time.perf_counter()
        parts = sorted(output_dir.glob("selection.rank*.jsonl"))
        sources = parts + ([manifest_path] if manifest_path.exists() else [])
        records = merge_manifests(sources, manifest_path, fingerprint=fp)
        if not records:
            raise DataError(
                f"No backbone candidate could be scored from {config.backbone_shards}: "
                f"{_sum_counts(g['reader'] for g in gathered)}. Check the shards and --backbone_filter."
            )
        rule = get_rule(config.selection, **config.keep_rule())
        result = rule.select(records)
        write_manifest(apply_selection(records, result), manifest_path, fingerprint=fp)
        for stale in parts:
            stale.unlink()
            meta_path(stale).unlink(missing_ok=True)
        if result.message:
            logger.warning(result.message)
        timings["select"] = time.perf_counter() - started
        report = {
            "settings": dataclasses.asdict(config),
            "resolution": resolution,
            "num_processes": state.num_processes,
            "counts": {
                **_sum_counts(g["reader"] for g in gathered),
                "scored_this_run": sum(g["summary"]["scored"] for g in gathered),
                "resumed": sum(g["summary"]["resumed"] for g in gathered),
                "skipped_nonfinite_loss": sum(g["summary"]["skipped_nonfinite"] for g in gathered),
                "selected": result.kept,
            },
            "selection": dataclasses.asdict(result) | {"selected_indices": None},
            "score_statistics": score_statistics(records),
            "curvature": curvature,
            "timings": timings,
        }
        report_path = output_dir / SCORE_REPORT_NAME
        report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        logger.info(
            "Scored %d candidates (%d resumed), kept %d; manifest: %s",
            len(records), report["counts"]["resumed"], result.kept, manifest_path,
        )
    state.wait_for_everyone()
    return ScoringResult(manifest_path, output_dir / SCORE_REPORT_NAME, report)


def _gather_objects(state: PartialState, obj: dict) -> list[dict]:
    if state.num_processes == 1:
        return [obj]
    gathered: list = [None] * state.num_processes
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


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
