"""``bat_report.json`` and the BAT section of the model card."""

from __future__ import annotations

import dataclasses

from ..albat import SIMILARITY, SelectionResult, rule_class
from .config import BatSettings


def build_report(
    settings: BatSettings,
    *,
    num_processes: int,
    resolution: int,
    gamma: float,
    score_report: dict | None,
    statistics: dict | None,
    selection: SelectionResult | None,
    source_counts: dict[str, int],
    stages: dict[str, str],
    timings: dict[str, float],
    shards: dict | None = None,
) -> dict:
    """The run's report: settings, counts, score statistics, γ (asked and measured), timings.

    ``stages`` says for each stage whether it ``ran``, ``resumed``, was ``reused`` from an
    earlier run in the same folder, ``given`` by the user, or ``skipped``. ``shards`` is the
    backbone shards' account (:meth:`~dreambat.data.shard_probe.ShardProbe.report`: given, used,
    empty shards skipped, img2dataset's expected vs found samples, short shards); ``None`` when
    the run read no shard (``--selection none`` or ``--selection_manifest``).
    """
    drawn = sum(v for k, v in source_counts.items() if k in ("subject", "backbone"))
    counts: dict = {}
    if score_report:
        counts.update({
            "candidates_read": score_report.get("counts", {}).get("candidates_read"),
            "scored": statistics["scored"] if statistics else None,
            "skipped_while_reading": score_report.get("counts", {}).get("skipped"),
            "skipped_corrupt_image": score_report.get("counts", {}).get("skipped_corrupt_image"),
            "skipped_caption_mismatch": score_report.get("counts", {}).get("skipped_caption_mismatch"),
            "skipped_not_shortlisted": score_report.get("counts", {}).get("skipped_not_shortlisted"),
            "skipped_nonfinite_loss": score_report.get("counts", {}).get("skipped_nonfinite_loss"),
            "scored_this_run": score_report.get("counts", {}).get("scored_this_run"),
        })
    elif statistics:
        counts["candidates"] = statistics["total"]
    if selection is not None:
        counts.update({"selected": selection.kept, "predicted_helpful": selection.n_positive})
    counts["training_samples"] = dict(source_counts)
    return {
        "settings": settings.to_dict(),
        "num_processes": num_processes,
        "resolution": resolution,
        "gamma": {
            "requested": settings.gamma,
            "used": gamma,
            "measured_backbone_share": (source_counts.get("backbone", 0) / drawn) if drawn else None,
        },
        "counts": counts,
        "shards": shards,
        "selection": None if selection is None else dataclasses.asdict(selection) | {"selected_indices": None},
        "score_statistics": statistics,
        "reliability": (score_report or {}).get("reliability"),
        "curvature": (score_report or {}).get("curvature"),
        "shortlist": (score_report or {}).get("shortlist"),
        "stages": stages,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def bat_model_card_section(
    settings: BatSettings, selection: SelectionResult | None, pool: int, gamma: float,
    reliability: dict | None = None,
) -> str:
    """Markdown for the model card: what was selected and how much of it was mixed in."""
    method = settings.selection.selection
    rule = rule_class(method).summary
    if rule is None or selection is None:
        return f"No backbone data: plain DreamBooth-LoRA (`--selection {method}`).\n"
    lines = [
        f"Backbone candidates considered: {pool}; kept {selection.kept} by {rule}"
        + (f" (η = {selection.threshold:.4g})" if selection.threshold is not None else "") + ".",
        f"Backbone share of the training stream γ = {gamma:.2f}; backbone images train on their own captions.",
        "The kept candidates are listed in `selection.jsonl` (one line per candidate, with its score).",
    ]
    if settings.selection.needs.scores == SIMILARITY and settings.bat.selection_manifest is None:
        query = settings.selection
        lines.insert(1, f"Scores: CLIP similarity to {query.clip_query_phrase} (the cosine of each candidate's "
                        f"image embedding to the {query.clip_query} query's, `{query.clip_model}`).")
    if settings.needs_surrogate:
        scoring = settings.scoring
        lines.insert(1, f"Scores: surrogate LoRA of {settings.bat.surrogate_steps} steps, K = "
                        f"{scoring.num_score_timesteps} timesteps, {scoring.reference_draws} reference draws per "
                        f"timestep, curvature `{scoring.curvature}`, damping c = {scoring.damping}, score seed "
                        f"{scoring.score_seed}, normalization `{scoring.score_normalization}`"
                        + (f", gradient norms capped at {settings.selection.max_grad_norm_ratio:g}x the median"
                           if settings.selection.max_grad_norm_ratio else "")
                        + (f", caption–image CLIP cosine ≥ {settings.pool.min_clip_score:g}"
                           if settings.pool.min_clip_score is not None else "") + ".")
        if reliability is not None:
            lines.insert(2, f"Ranking reliability: estimated test-retest Spearman {reliability['full_run']:.2f} "
                            f"between two score seeds (half-budget runs agree at {reliability['half_run']:.2f}; "
                            f"noise mostly from the {reliability['limited_by']}).")
    return "\n".join(f"- {line}" for line in lines) + "\n"
