"""A complete scoring run on a Stable Diffusion backbone: checks, surrogate, reference set, streamed
scores, merge, selection, report.

Launch with several processes (``accelerate launch --multi_gpu --num_processes 2`` or
``torchrun --nproc_per_node 2``) and candidates are split by
:class:`~dreambat.data.shards.ShardReader` (``split_by="sample"``): each process writes its own part
manifest, the main process merges them in candidate order. Scores do not depend on the split,
so the merged manifest equals a single-process one.

A run has two steps, which a BAT run also takes one after the other: :func:`score_pool` scores (or
resumes, or reuses) the candidates, and :func:`finish_scoring` applies the selection rule once and
writes the manifest and the report once. Whether the folder's manifest is new, an interrupted run
to resume, a finished run to reuse, or a run of other settings to refuse is decided by
:func:`dreambat.reuse.manifest_status`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..albat import (
    INFLUENCE,
    SIMILARITY,
    AlbatScorer,
    LoraBlocks,
    ManifestMismatchError,
    ManifestRecord,
    SelectionResult,
    SelectionRule,
    apply_selection,
    get_strategy,
    merge_records,
    meta_path,
    read_manifest,
    score_statistics,
    write_manifest,
)
from ..backbone.load import load_backbone
from ..constants import SCORE_CONFIG_NAME, SCORE_REPORT_NAME, SELECTION_MANIFEST_NAME
from ..data.embeddings import check_embeddings
from ..data.shard_probe import ShardProbe, shared_shard_probe
from ..data.shards import BackboneSample
from ..data.subject import SubjectDataset, collate_subject
from ..data.transforms import ImageTransform, original_size
from ..errors import DataError
from ..files import atomic_write_text
from ..inputs import ResolvedInputs, resolve_inputs
from ..launch import process_state
from ..lora import load_lora, lora_weights_file
from ..pivotal import expand_prompts, load_new_tokens
from ..reuse import PART_GLOB, ManifestStatus, manifest_status, scores_fingerprint
from ..runlock import run_lock
from ..timing import Timer
from .config import ScoreSettings, word_message
from .diffusion_task import DiffusionLossTask
from .reliability import describe_reliability, reliability_advice, reliability_report
from .retrieval import collate_images, load_clip, similarity_scorer
from .shortlist import Shortlist
from .stream import gather_counts, stream_scores, sum_counts

logger = logging.getLogger(__name__)

SURROGATE_ADAPTER = "surrogate"


@dataclass
class ScoringResult:
    """Where the run wrote its manifest and report; ``status`` is ``ran``, ``resumed`` or ``reused``."""

    manifest_path: Path
    report_path: Path
    report: dict
    status: str = "ran"


@dataclass
class ScoredPool:
    """What :func:`score_pool` produced, before any selection.

    Attributes:
        status: the manifest's status when scoring started (``new``, ``partial``, ``finished``).
        records: every candidate's record, merged over processes (main process only; ``[]`` elsewhere).
        gathered: each process's reader counts and scoring summary (``None`` when reused).
        earlier: the finished run's report, when reused.
    """

    settings: ScoreSettings
    shards: ShardProbe
    resolution: int
    fingerprint: dict
    status: ManifestStatus
    records: list[ManifestRecord]
    gathered: list[dict] | None
    curvature: dict | None
    earlier: dict | None
    timer: Timer = field(default_factory=Timer)
    shortlist: Shortlist | None = None

    @property
    def run_status(self) -> str:
        """``reused``, ``resumed`` or ``ran``, as the run's stages report it."""
        return {"finished": "reused", "partial": "resumed"}.get(self.status, "ran")


def check_score_inputs(
    settings: ScoreSettings, resolved: ResolvedInputs | None = None
) -> tuple[ResolvedInputs, Path | None, ShardProbe]:
    """Everything a scoring run can check before a model loads: the inputs, the surrogate's weights
    file (for influence scores) and the shards (every process gets the main process's probe).
    Returns the resolved inputs, the weights file and the probe."""
    resolved = resolved or resolve_inputs(settings.inputs)
    surrogate = (lora_weights_file(settings.scoring.surrogate_lora, what="surrogate LoRA")
                 if settings.scores == INFLUENCE else None)
    pool = settings.pool
    shards = shared_shard_probe(pool.backbone_shards, pool.backbone_filter, strict=pool.strict_shards)
    if pool.shortlist_embeddings is not None:
        check_embeddings(pool.shortlist_embeddings, pool.shortlist_key_column)
    return resolved, surrogate, shards


def run_scoring(
    settings: ScoreSettings, *, resolved: ResolvedInputs | None = None, show_progress: bool = True
) -> ScoringResult:
    """Score every candidate of the pool and write the selection manifest and report.

    Writes ``selection.jsonl`` (one line per candidate, ``selected`` set by the rule),
    ``score_report.json`` (settings, counts, the ``shards`` section of
    :meth:`~dreambat.data.shard_probe.ShardProbe.report`, score statistics, curvature, timings) and
    ``score_config.json`` to ``settings.inputs.output_dir``. An interrupted run resumes without
    rescoring finished candidates; a finished run with the same fingerprint is reused (only the
    selection rule is applied again). The folder is locked for the run (:mod:`dreambat.runlock`):
    a second run into it is refused before it writes anything. A stop signal
    (:mod:`dreambat.preemption`) ends the scoring after the batch at hand, every scored batch kept.

    Args:
        settings: the run's setting groups; ``settings.scoring.surrogate_lora`` names the surrogate.
        resolved: :func:`~dreambat.inputs.resolve_inputs` of ``settings.inputs``, if the caller has it.
    """
    with run_lock(settings.inputs.output_dir, what="scoring run"):
        resolved, surrogate, shards = check_score_inputs(settings, resolved)
        pool = score_pool(settings, resolved, surrogate, shards, show_progress=show_progress)
        report: dict = {}
        if process_state().is_main_process:
            _, _, report = finish_scoring(pool, settings.selection.rule(settings.seed))
        process_state().wait_for_everyone()
    output_dir = Path(settings.inputs.output_dir)
    return ScoringResult(output_dir / SELECTION_MANIFEST_NAME, output_dir / SCORE_REPORT_NAME, report,
                         pool.run_status)


def score_pool(
    settings: ScoreSettings, resolved: ResolvedInputs, surrogate: Path | None, shards: ShardProbe, *,
    show_progress: bool = True,
) -> ScoredPool:
    """Score (resume, or reuse) every candidate of the pool; every process calls it.

    Only the probe's usable shards are read (an empty shard is skipped on every process); the
    fingerprint keeps the shards as the user gave them, so a resumed run matches.

    The part manifests stay on disk until :func:`finish_scoring` has written the merged manifest,
    so a crash in between loses no score. Raises :class:`ManifestMismatchError` (every process, so
    all stop together) when the folder holds scores of other settings.
    """
    state = process_state()
    output_dir = Path(settings.inputs.output_dir)
    manifest_path = output_dir / SELECTION_MANIFEST_NAME
    fp = scores_fingerprint(settings, resolved, surrogate)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if settings.scoring.overwrite_manifest:
            for stale in [manifest_path, *output_dir.glob(PART_GLOB)]:
                stale.unlink(missing_ok=True)
                meta_path(stale).unlink(missing_ok=True)
    state.wait_for_everyone()
    try:
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
        records = read_manifest(manifest_path) if state.is_main_process else []
        return ScoredPool(settings, shards, resolved.resolution, fp, status, records, None,
                          earlier.get("curvature"), earlier, timer)
    if state.is_main_process:
        settings.save(output_dir / SCORE_CONFIG_NAME)
    shortlist = None
    if settings.pool.shortlist is not None:
        from .first_stage import shortlist_stage  # it runs a scoring run of its own: score_pool, finish_scoring

        with timer("shortlist"):
            shortlist = shortlist_stage(settings, resolved, shards, show_progress=show_progress)
    usable = dataclasses.replace(settings, pool=dataclasses.replace(settings.pool, backbone_shards=list(shards.usable)))
    gathered, curvature = SCORERS[settings.scores](usable, resolved, surrogate, fp, timer, show_progress, shortlist)
    records: list[ManifestRecord] = []
    if state.is_main_process:
        with timer("select"):  # merging and selecting: one step of the main process in the report
            parts = sorted(output_dir.glob(PART_GLOB))
            records = merge_records(parts + ([manifest_path] if manifest_path.exists() else []), fingerprint=fp)
        if not records:
            raise DataError(
                f"No backbone candidate could be scored from {settings.pool.backbone_shards}: "
                f"{sum_counts(g['reader'] for g in gathered)}. Check the shards and --backbone_filter."
            )
    return ScoredPool(settings, shards, resolved.resolution, fp, status, records, gathered, curvature, None, timer,
                      shortlist)


def select_and_write(
    records: list[ManifestRecord], rule: SelectionRule, manifest_path: Path, fingerprint: dict
) -> tuple[list[ManifestRecord], SelectionResult]:
    """Apply ``rule`` to ``records`` (its advice worded with flags and logged) and write the flagged
    manifest with ``fingerprint``: the one place a run selects and writes ``selection.jsonl``."""
    result = rule.select(records)
    result = dataclasses.replace(result, message=word_message(result.message))
    if result.message:
        logger.warning(result.message)
    records = apply_selection(records, result)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(records, manifest_path, fingerprint=fingerprint)
    return records, result


def finish_scoring(pool: ScoredPool, rule: SelectionRule) -> tuple[list[ManifestRecord], SelectionResult, dict]:
    """Main process: apply ``rule`` once, write the manifest and ``score_report.json`` once, remove
    the part manifests. Returns the flagged records, the rule's result and the report."""
    settings, timer, fp = pool.settings, pool.timer, pool.fingerprint
    output_dir = Path(settings.inputs.output_dir)
    manifest_path = output_dir / SELECTION_MANIFEST_NAME
    with timer("select"):
        records, result = select_and_write(pool.records, rule, manifest_path, fp)
        for stale in sorted(output_dir.glob(PART_GLOB)):
            stale.unlink()
            meta_path(stale).unlink(missing_ok=True)
    earlier, gathered = pool.earlier, pool.gathered
    counts = earlier["counts"] if gathered is None else {
        **sum_counts(g["reader"] for g in gathered),
        "scored_this_run": sum(g["summary"]["scored"] for g in gathered),
        "resumed": sum(g["summary"]["resumed"] for g in gathered),
        "skipped_nonfinite_loss": sum(g["summary"]["skipped_nonfinite"] for g in gathered),
    }
    timings = timer.seconds
    report = {
        "settings": settings.to_dict(),
        "fingerprint": fp,
        "manifest_records": len(records),
        "status": "reused" if gathered is None else ("resumed" if counts["resumed"] else "ran"),
        "resolution": pool.resolution,
        "num_processes": process_state().num_processes if gathered is not None else earlier.get("num_processes"),
        "counts": {**counts, "selected": result.kept},
        "shards": pool.shards.report(),
        "selection": dataclasses.asdict(result) | {"selected_indices": None},
        "score_statistics": score_statistics(records),
        "reliability": reliability_report(records, settings.scoring),
        "curvature": pool.curvature,
        "timings": (earlier["timings"] if gathered is None else {}) | timings,
    }
    if settings.pool.shortlist is not None:
        report["shortlist"] = earlier.get("shortlist") if gathered is None else pool.shortlist.report_section(records)
    text = json.dumps(report, indent=2, default=str)
    atomic_write_text(output_dir / SCORE_REPORT_NAME, text + "\n")
    report = json.loads(text)  # as a later reader of the file sees it
    logger.info(
        "Scored %d candidates (%d resumed), kept %d; %s; manifest: %s",
        len(records), counts.get("resumed", 0), result.kept,
        f"CLIP similarity to {settings.selection.clip_query_phrase}" if settings.scores == SIMILARITY
        else describe_reliability(report["reliability"]),
        manifest_path,
    )
    advice = reliability_advice(report["reliability"], settings.scoring)
    if advice:
        logger.warning(advice)
    return records, result, report


def collate_candidates(samples: Sequence[BackboneSample], transform: ImageTransform) -> dict:
    """Backbone candidates as a task batch: centre-cropped pixels, their own captions, keys, and
    their sizes before any resizing (SDXL's conditioning)."""
    return {
        "pixel_values": torch.stack([transform(s.image) for s in samples]),
        "prompts": [s.caption for s in samples],
        "keys": [s.key for s in samples],
        "original_sizes": [original_size(s.image, s.metadata) for s in samples],
    }


def _retrieve(
    settings: ScoreSettings, resolved: ResolvedInputs, surrogate: None, fp: dict, timer: Timer, show_progress: bool,
    shortlist: Shortlist | None = None,
) -> tuple[list[dict], dict]:
    """Embed the query (the subject photos or a prompt) and score this process's candidates by CLIP
    similarity to it."""
    state, selection = process_state(), settings.selection
    with timer("load"):
        encoder = load_clip(selection.clip_model, selection.clip_pretrained, state.device)
    with timer("query_embedding"):
        scorer = similarity_scorer(encoder, selection.clip_query, subject_images=resolved.subject_images,
                                   prompt=selection.clip_query_prompt)
    with timer("score"):
        summary, reader, left_out = stream_scores(settings, scorer, collate_images, fp, show_progress, encoder=encoder,
                                            shortlist=shortlist)
    return gather_counts(reader, summary, left_out), scorer.describe()


def _score(
    settings: ScoreSettings, resolved: ResolvedInputs, surrogate: Path, fp: dict, timer: Timer, show_progress: bool,
    shortlist: Shortlist | None = None,
) -> tuple[list[dict], dict]:
    """Load the backbone with the surrogate, fit the direction, score this process's candidates."""
    state = process_state()
    inputs, scoring = settings.inputs, settings.scoring
    with timer("load"):
        backbone = load_backbone(str(resolved.backbone_path), revision=inputs.revision, variant=inputs.variant,
                                 vae=inputs.pretrained_vae_model_name_or_path)
        backbone.to(state.device)
        load_lora(surrogate, backbone.unet, backbone.text_encoder, backbone.text_encoder_2,
                  adapter_name=SURROGATE_ADAPTER)
        # a surrogate trained with new tokens (pivotal tuning) scores with them; they stay fixed:
        # what is differentiated is the LoRA alone
        new_tokens = load_new_tokens(surrogate, backbone.tokenizer, backbone.text_encoder)
        blocks = LoraBlocks.from_models(backbone.unet, *backbone.text_encoders)
        task = DiffusionLossTask(backbone, scoring.candidate_design(), output=scoring.score_output,
                                 crop_top_left=inputs.crop_top_left)
        reference_task = DiffusionLossTask(backbone, scoring.reference_design(), output=scoring.score_output,
                                           crop_top_left=inputs.crop_top_left)
        (prompt,) = expand_prompts([inputs.instance_prompt], new_tokens)
        subject = SubjectDataset(resolved.subject_images, prompt, resolved.resolution, center_crop=True)
        n_ref = len(subject) * reference_task.num_terms
        strategy = get_strategy(scoring.curvature, scoring.damping, n_ref=n_ref, max_dim=max(blocks.dims))
        scorer = AlbatScorer(task, blocks, strategy, reference_task=reference_task,
                             normalize_terms=scoring.normalize_timesteps, normalization=scoring.score_normalization)

    with timer("reference_gradients"):
        # One photo at a time, in chunks of as many UNet rows as a candidate batch: memory stays that
        # of a scoring step however many reference draws there are (the rows themselves are kept).
        rows = scoring.score_batch_size * task.num_terms
        curvature = scorer.fit(chunk for i in range(len(subject))
                               for chunk in reference_task.chunks(collate_subject([subject[i]]), rows))

    with timer("score"):
        transform = ImageTransform(resolved.resolution, center_crop=True)
        summary, reader, left_out = stream_scores(settings, scorer, lambda batch: collate_candidates(batch, transform), fp,
                                            show_progress, shortlist=shortlist)
    return gather_counts(reader, summary, left_out), curvature


# How each kind of score is computed: (settings, resolved, surrogate, fp, timer, show_progress, shortlist)
# -> (each process's counts and summary, the scorer's description for the report).
SCORERS = {INFLUENCE: _score, SIMILARITY: _retrieve}
