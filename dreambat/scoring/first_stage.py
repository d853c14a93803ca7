"""The first stage of ``--shortlist N`` (:mod:`dreambat.scoring.shortlist`): CLIP similarity of every
candidate, computed by a scoring run of its own in ``OUTPUT_DIR/shortlist/`` or read from
precomputed embeddings, the top N kept; every process gets the same :class:`Shortlist`."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..albat import INFLUENCE
from ..constants import SCORE_REPORT_NAME, SELECTION_MANIFEST_NAME
from ..data.embeddings import EmbeddingTopK, embedding_parts
from ..data.shard_probe import ShardProbe
from ..inputs import ResolvedInputs
from ..launch import on_main_for_all, process_state
from ..timing import Timer
from .config import PoolConfig, ScoreSettings, SelectionConfig
from .retrieval import IMAGE_QUERY, load_clip, similarity_scorer
from .run import finish_scoring, score_pool
from .shortlist import SHORTLIST_DIR, EmbeddingShortlist, Shortlist

logger = logging.getLogger(__name__)


def first_stage_settings(settings: ScoreSettings) -> ScoreSettings:
    """The ``--shortlist N`` first stage as a scoring run of its own: CLIP similarity to the
    shortlist's query, the top N kept, in ``OUTPUT_DIR/shortlist/``, over the same pool (and the same
    ``--min_clip_score`` filter)."""
    pool, selection = settings.pool, settings.selection
    inputs = dataclasses.replace(settings.inputs, output_dir=str(Path(settings.inputs.output_dir) / SHORTLIST_DIR))
    first_pool = dataclasses.replace(pool, shortlist=None, shortlist_query=IMAGE_QUERY, shortlist_prompt=None,
                                     shortlist_embeddings=None, shortlist_key_column="key")
    rule = SelectionConfig(selection="clip", num_backbone_samples=pool.shortlist, clip_model=selection.clip_model,
                           clip_pretrained=selection.clip_pretrained, clip_query=pool.shortlist_query,
                           clip_query_prompt=pool.shortlist_prompt)
    return ScoreSettings(inputs=inputs, pool=first_pool, scoring=settings.scoring, selection=rule)


def shortlist_stage(settings: ScoreSettings, resolved: ResolvedInputs, shards: ShardProbe, *,
                    show_progress: bool = True) -> Shortlist:
    """Run (resume, or reuse) the first stage of ``--shortlist N`` on every process; every process
    gets what it kept. Its manifest and report are written once, by the main process."""
    first = first_stage_settings(settings)
    logger.info("Shortlist: ranking every candidate by CLIP similarity to %s (%s%s) to keep %d for %s scoring.",
                first.selection.clip_query_phrase, first.selection.clip_model,
                f", embeddings read from {settings.pool.shortlist_embeddings}" if settings.pool.shortlist_embeddings
                else "", settings.pool.shortlist, "ALBAT" if settings.scores == INFLUENCE else "CLIP")
    if settings.pool.shortlist_embeddings is not None:
        return on_main_for_all(lambda: precomputed_shortlist(first, resolved, settings.pool))
    scored = score_pool(first, resolved, None, shards, show_progress=show_progress)

    def kept() -> Shortlist:
        records, _, report = finish_scoring(scored, first.selection.rule(first.seed))
        folder = Path(first.inputs.output_dir)
        return Shortlist.from_records(settings.pool.shortlist, records, {
            "query": first.selection.clip_query_phrase, "encoder": first.selection.clip_model,
            "status": scored.run_status, "manifest": str(folder / SELECTION_MANIFEST_NAME),
            "report": str(folder / SCORE_REPORT_NAME), "seconds": report["timings"],
        })

    return on_main_for_all(kept)


def precomputed_shortlist(first: ScoreSettings, resolved: ResolvedInputs, pool: PoolConfig) -> EmbeddingShortlist:
    """The first stage over ``--shortlist_embeddings``: the query embedded with ``--clip_model``, then
    one streamed pass over the embedding files keeping a running top N (flat in the pool's size)."""
    timer = Timer()
    with timer("load"):
        encoder = load_clip(first.selection.clip_model, first.selection.clip_pretrained, process_state().device)
    with timer("query_embedding"):
        query = similarity_scorer(encoder, first.selection.clip_query, subject_images=resolved.subject_images,
                                  prompt=first.selection.clip_query_prompt).query
    with timer("rank"):
        top = EmbeddingTopK(query.cpu().numpy().astype("float32"), pool.shortlist)
        top.add_parts(embedding_parts(pool.shortlist_embeddings), pool.shortlist_key_column)
    best = top.best()
    logger.info("Shortlist: %d embedding rows ranked (%d duplicate keys), %d kept, in %.1f s.", top.rows,
                top.duplicates, len(best), sum(timer.seconds.values()))
    return EmbeddingShortlist(
        pool.shortlist, frozenset(best), report={
            "query": first.selection.clip_query_phrase, "encoder": first.selection.clip_model, "status": "ran",
            "embeddings": str(pool.shortlist_embeddings), "seconds": timer.seconds},
        scores=best, known=frozenset(top.keys), rows=top.rows, duplicates=top.duplicates)
