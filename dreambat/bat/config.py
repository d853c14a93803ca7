"""Typed, validated settings of the BAT stages: surrogate, scoring, selection and the γ-mixture.

:class:`BatConfig` sits next to :class:`~dreambat.config.TrainConfig` on the command line of
``train_dreambooth_bat.py``: the DreamBooth flags keep diffusers' names, these are dreambat's own.
:func:`check_combination` refuses settings that are each valid but wrong together, before any
model loads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..albat.config import KEEP_FLAGS, check_keep_flags, keep_rule_kwargs
from ..config import TrainConfig
from ..errors import ConfigError

DEFAULT_GAMMA = 0.5


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class BatConfig:
    """Backbone Augmented Training: which backbone images to add, and how much of them."""

    selection: Literal["albat", "random", "none"] = _help(
        "Backbone selection: albat (influence scores of a surrogate LoRA), random (seeded, same "
        "machinery, no scores needed), none (plain DreamBooth-LoRA).",
        default="albat",
    )
    backbone_shards: list[str] = _help(
        "LAION-style webdataset shards of the backbone's pre-training data: paths, brace patterns "
        "('laion/{00000..00009}.tar') or pipe: URLs.",
        default_factory=list,
    )
    backbone_filter: list[str] = _help(
        "Metadata filters on the shards' json, e.g. 'width>=512' (repeatable).", default_factory=list
    )
    max_candidates: int | None = _help("Consider at most this many backbone candidates (stream order).", default=None)
    candidate_ratio: float = _help(
        "Fraction of the backbone pool to consider at all, drawn by a hash of each sample's key "
        "(the paper's sample ratio).",
        default=1.0,
    )
    surrogate_steps: int = _help("Training steps of the surrogate LoRA (stage 2).", default=200)
    surrogate_lora: str | None = _help(
        "Use this trained LoRA (folder or .safetensors) as the surrogate instead of training one.", default=None
    )
    num_score_timesteps: int = _help("K: fixed timesteps the per-sample ALBAT loss averages over.", default=8)
    curvature: Literal["auto", "exact", "datainf", "identity"] = _help(
        "Inverse-curvature strategy of ALBAT: exact (Woodbury), datainf (Sherman-Morrison after "
        "swapping inverse and average), identity (gradient similarity); auto = exact up to 1024 "
        "reference rows.",
        default="auto",
    )
    damping: float = _help("c in the per-block damping λ_l = c · mean‖g‖² / d_l.", default=0.1)
    score_batch_size: int = _help("Candidates per scoring forward/backward.", default=8)
    num_backbone_samples: int | None = _help("Keep the top N candidates (random: N at random).", default=None)
    score_threshold: float | None = _help("ALBAT: keep candidates with Z ≥ η.", default=None)
    backbone_fraction: float | None = _help("Keep this fraction of the scored pool.", default=None)
    keep_nonpositive: bool = _help(
        "Allow keeping candidates with Z ≤ 0, which are predicted not to help.", default=False
    )
    augmentation_ratio: float | None = _help(
        f"γ: expected share of backbone samples in the final training stream (default {DEFAULT_GAMMA} "
        "when backbone samples are selected; the paper sweeps 0.5-0.99).",
        default=None,
    )
    selection_manifest: str | None = _help(
        "Reuse the selection.jsonl of an earlier run (skips surrogate and scoring); the selection "
        "rule is applied again to its scores.",
        default=None,
    )
    overwrite_manifest: bool = _help("Discard a manifest in output_dir scored with other settings.", default=False)

    def __post_init__(self) -> None:
        if self.augmentation_ratio is not None and not 0.0 <= self.augmentation_ratio < 1.0:
            raise ConfigError(
                f"--augmentation_ratio (γ) must be in [0, 1), got {self.augmentation_ratio}: it is the "
                "share of backbone samples, and the subject must keep some of the stream."
            )
        if self.selection == "none" and self.augmentation_ratio:
            raise ConfigError(
                "--augmentation_ratio has no effect with --selection none (no backbone samples are "
                "kept); drop it, or choose --selection albat or random."
            )
        needs_pool = self.selection != "none" and self.selection_manifest is None
        if needs_pool and not self.backbone_shards:
            raise ConfigError(
                f"--selection {self.selection} needs backbone candidates: pass --backbone_shards "
                "(e.g. 'laion/{00000..00009}.tar') or --selection_manifest from an earlier run, "
                "or use --selection none for plain DreamBooth-LoRA."
            )
        for name in ("surrogate_steps", "num_score_timesteps", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"--max_candidates must be >= 1 when given, got {self.max_candidates}.")
        if not 0.0 < self.candidate_ratio <= 1.0:
            raise ConfigError(f"--candidate_ratio must be in (0, 1], got {self.candidate_ratio}.")
        if self.damping <= 0:
            raise ConfigError(f"--damping must be > 0, got {self.damping}.")
        check_keep_flags(self)
        keep = [name for name in KEEP_FLAGS if getattr(self, name) is not None]
        if self.selection == "random" and not keep and self.selection_manifest is None:
            raise ConfigError(
                "--selection random needs a count: --num_backbone_samples or --backbone_fraction "
                "(or --selection_manifest of an ALBAT run, to keep as many as it found helpful)."
            )

    @property
    def gamma(self) -> float:
        """γ as the final training uses it: 0 without selection, else the flag or its default."""
        if self.selection == "none":
            return 0.0
        return DEFAULT_GAMMA if self.augmentation_ratio is None else self.augmentation_ratio

    @property
    def needs_surrogate(self) -> bool:
        """Stages 2-3 run only for ALBAT scores that no earlier manifest provides."""
        return self.selection == "albat" and self.selection_manifest is None

    def keep_rule(self, seed: int) -> dict[str, Any]:
        """Keyword arguments of the selection rule; ALBAT defaults to every Z > 0."""
        return keep_rule_kwargs(self, seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"gamma": self.gamma}


def check_combination(train: TrainConfig, bat: BatConfig) -> None:
    """Refuse flag combinations that are individually valid but contradict each other."""
    if bat.selection_manifest is not None and not Path(bat.selection_manifest).is_file():
        raise ConfigError(
            f"--selection_manifest {bat.selection_manifest} does not exist; give the selection.jsonl "
            "of an earlier run, or drop the flag to score again."
        )
    if bat.selection_manifest is not None and bat.surrogate_lora is not None:
        raise ConfigError("--selection_manifest already holds the scores; --surrogate_lora would not be used. Drop one.")
    if bat.selection == "none" and bat.surrogate_lora is not None:
        raise ConfigError("--surrogate_lora is only used by --selection albat; drop it or change --selection.")


def run_config(train: TrainConfig, bat: BatConfig) -> dict[str, Any]:
    """Both resolved configurations as one JSON-ready dict (``{"train": ..., "bat": ...}``)."""
    return {"train": train.to_dict(), "bat": bat.to_dict()}


def save_run_config(path: str | Path, train: TrainConfig, bat: BatConfig) -> Path:
    """Write :func:`run_config` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_config(train, bat), indent=2, sort_keys=True) + "\n")
    return path
