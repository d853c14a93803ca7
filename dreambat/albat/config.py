"""Typed, validated settings of an ALBAT scoring run (``dreambat score``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ScoreConfig:
    """Score backbone candidates by their influence on a surrogate LoRA's subject loss."""

    pretrained_model_name_or_path: str = _help("Backbone: a local diffusers folder or a cached hub id.")
    surrogate_lora: str = _help(
        "The surrogate LoRA: a folder holding pytorch_lora_weights.safetensors, or that file."
    )
    instance_data_dir: str = _help("Folder with the subject photos (the adaptation data).")
    instance_prompt: str = _help("Prompt naming the subject, e.g. 'a photo of sks dog'.")
    backbone_shards: list[str] = _help(
        "LAION-style webdataset shards: paths, brace patterns ('shard-{00000..00009}.tar') or pipe: URLs.",
        default_factory=list,
    )
    output_dir: str = _help("Where selection.jsonl and score_report.json are written.", default="dreambat-scores")
    revision: str | None = _help("Revision of a cached hub backbone.", default=None)
    variant: str | None = _help("Weight variant of the backbone files, e.g. 'fp16'.", default=None)
    resolution: int | None = _help("Image size for scoring; default: the backbone's native size.", default=None)
    num_score_timesteps: int = _help("K: fixed timesteps the per-sample loss averages over.", default=8)
    curvature: Literal["auto", "exact", "datainf", "identity"] = _help(
        "Inverse-curvature strategy: exact (Woodbury), datainf (Sherman-Morrison after swapping "
        "inverse and average), identity (gradient similarity); auto = exact up to 1024 reference rows.",
        default="auto",
    )
    damping: float = _help("c in the per-block damping λ_l = c · mean‖g‖² / d_l.", default=0.1)
    score_batch_size: int = _help("Candidates per scoring forward/backward.", default=8)
    max_candidates: int | None = _help("Score at most this many candidates (in stream order).", default=None)
    candidate_ratio: float = _help(
        "Fraction of the backbone pool to score at all, drawn by a hash of each sample's key.", default=1.0
    )
    backbone_filter: list[str] = _help(
        "Metadata filters on the shards' json, e.g. 'width>=256' (repeatable).", default_factory=list
    )
    selection: Literal["albat", "random", "none"] = _help(
        "Which candidates to keep: albat (Z ≥ η), random (same count, seeded), none.", default="albat"
    )
    num_backbone_samples: int | None = _help("Keep the top N candidates (η = the N-th score).", default=None)
    score_threshold: float | None = _help("Keep candidates with Z ≥ η.", default=None)
    backbone_fraction: float | None = _help("Keep this fraction of the scored pool.", default=None)
    keep_nonpositive: bool = _help(
        "Allow keeping candidates with Z ≤ 0 (which are predicted not to help).", default=False
    )
    scoring_path: Literal["fast", "reference"] = _help(
        "fast: hook-contracted scores; reference: plain per-sample backward loop (slow, for checks).",
        default="fast",
    )
    seed: int = _help("Seed for the random selection baseline.", default=0)
    overwrite_manifest: bool = _help("Discard a manifest scored with other settings.", default=False)

    def __post_init__(self) -> None:
        if not self.instance_prompt.strip():
            raise ConfigError("--instance_prompt is empty; name the subject, e.g. 'a photo of sks dog'.")
        if self.selection != "none" and not self.backbone_shards:
            raise ConfigError(
                f"--selection {self.selection} needs candidates: pass --backbone_shards "
                "(e.g. 'laion/{00000..00009}.tar')."
            )
        if self.num_score_timesteps < 1:
            raise ConfigError(f"--num_score_timesteps (K) must be >= 1, got {self.num_score_timesteps}.")
        if self.damping <= 0:
            raise ConfigError(f"--damping must be > 0, got {self.damping}.")
        if self.score_batch_size < 1:
            raise ConfigError(f"--score_batch_size must be >= 1, got {self.score_batch_size}.")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"--max_candidates must be >= 1 when given, got {self.max_candidates}.")
        if not 0.0 < self.candidate_ratio <= 1.0:
            raise ConfigError(f"--candidate_ratio must be in (0, 1], got {self.candidate_ratio}.")
        check_keep_flags(self)

    def keep_rule(self) -> dict[str, Any]:
        """Keyword arguments of the selection rule (η, top-N or fraction; ALBAT defaults to Z > 0)."""
        return keep_rule_kwargs(self, self.seed)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path


KEEP_FLAGS = ("num_backbone_samples", "score_threshold", "backbone_fraction")


def check_keep_flags(config: Any) -> None:
    """Validate how many candidates a config keeps (``selection``, ``num_backbone_samples``,
    ``score_threshold``, ``backbone_fraction``); shared by ``dreambat score`` and the BAT run."""
    keep = [name for name in KEEP_FLAGS if getattr(config, name) is not None]
    if config.selection != "none" and len(keep) > 1:
        raise ConfigError(f"Give at most one of --{', --'.join(keep)}: each sets how many candidates to keep.")
    if config.selection == "random" and config.score_threshold is not None:
        raise ConfigError("--selection random keeps a count, not a threshold: use --num_backbone_samples or --backbone_fraction.")
    if config.backbone_fraction is not None and not 0 < config.backbone_fraction <= 1:
        raise ConfigError(f"--backbone_fraction must be in (0, 1], got {config.backbone_fraction}.")
    if config.num_backbone_samples is not None and config.num_backbone_samples < 1:
        raise ConfigError(f"--num_backbone_samples must be >= 1, got {config.num_backbone_samples}.")


def keep_rule_kwargs(config: Any, seed: int) -> dict[str, Any]:
    """Keyword arguments of ``get_rule(config.selection, ...)``; ALBAT without a count keeps every Z > 0."""
    if config.selection == "none":
        return {}
    if config.selection == "random":
        return {"num_samples": config.num_backbone_samples, "fraction": config.backbone_fraction, "seed": seed}
    rule = {
        "threshold": config.score_threshold, "num_samples": config.num_backbone_samples,
        "fraction": config.backbone_fraction, "force": config.keep_nonpositive,
    }
    if all(rule[k] is None for k in ("threshold", "num_samples", "fraction")):
        rule["threshold"] = 0.0  # keep every candidate predicted to help; Z = 0 itself is dropped
    return rule
