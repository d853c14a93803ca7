"""Settings of a BAT run: the DreamBooth flags, the shared scoring groups, and BAT's own flags.

``train_dreambooth_bat.py`` parses five groups side by side (:data:`BatSettings.GROUPS`): the
DreamBooth flags (:class:`~dreambat.training.config.TrainConfig`, diffusers' names), the candidate
pool, the ALBAT estimator and the selection rule (shared with ``dreambat score``, defined in
:mod:`dreambat.scoring.config`), and :class:`BatConfig`. :class:`BatSettings` holds them and
refuses combinations that are each valid but wrong together, before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..albat import INFLUENCE
from ..constants import SURROGATE_DIR
from ..errors import ConfigError
from ..fields import build_groups, flag
from ..files import atomic_write_text
from ..scoring.config import PoolConfig, ScoreSettings, ScoringConfig, SelectionConfig, check_shortlist_rule
from ..training.config import TrainConfig

DEFAULT_GAMMA = 0.5


@dataclass
class BatConfig:
    """Backbone Augmented Training: the surrogate, the γ-mixture, reuse of an earlier selection."""

    surrogate_steps: int = flag("Training steps of the surrogate LoRA (stage 1).", default=200)
    augmentation_ratio: float | None = flag(
        f"γ: expected share of backbone samples in the final training stream (default {DEFAULT_GAMMA} "
        "when backbone samples are selected; the paper sweeps 0.5-0.99).",
        default=None,
    )
    selection_manifest: str | None = flag(
        "Reuse the selection.jsonl of an earlier run (skips surrogate and scoring); the selection "
        "rule is applied again to its scores.",
        default=None,
    )
    overwrite_output_dir: bool = flag(
        "Start over in an --output_dir that holds a run with other settings: that run is moved to "
        "output_dir/archive/<time>/ first (nothing is deleted).",
        default=False,
    )

    def __post_init__(self) -> None:
        if self.augmentation_ratio is not None and not 0.0 <= self.augmentation_ratio < 1.0:
            raise ConfigError(
                f"--augmentation_ratio (γ) must be in [0, 1), got {self.augmentation_ratio}: it is the "
                "share of backbone samples, and the subject must keep some of the stream."
            )
        if self.surrogate_steps < 1:
            raise ConfigError(f"--surrogate_steps must be >= 1, got {self.surrogate_steps}.")


@dataclass
class BatSettings:
    """Every setting of a BAT run, grouped as on the command line."""

    train: TrainConfig
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    bat: BatConfig = dataclasses.field(default_factory=BatConfig)

    GROUPS: ClassVar[tuple[type, ...]] = (TrainConfig, PoolConfig, ScoringConfig, SelectionConfig, BatConfig)

    def __post_init__(self) -> None:
        selection, needs, bat = self.selection.selection, self.selection.needs, self.bat
        if not needs.candidates and bat.augmentation_ratio:
            raise ConfigError(
                f"--augmentation_ratio has no effect with --selection {selection} (no backbone samples are "
                "kept); drop it, or choose a --selection that keeps some."
            )
        if needs.candidates and bat.selection_manifest is None and not self.pool.backbone_shards:
            raise ConfigError(
                f"--selection {selection} needs backbone candidates: pass --backbone_shards "
                "(e.g. 'laion/{00000..00009}.tar') or --selection_manifest from an earlier run, "
                "or use --selection none for plain DreamBooth-LoRA."
            )
        if (needs.default_keep_reads_scores and not self.selection.keep_given and bat.selection_manifest is None
                and needs.scores is None):
            raise ConfigError(
                f"--selection {selection} needs a count: --num_backbone_samples or --backbone_fraction "
                "(or --selection_manifest of an ALBAT run, to keep as many as it found helpful)."
            )
        if bat.selection_manifest is not None and not Path(bat.selection_manifest).is_file():
            raise ConfigError(
                f"--selection_manifest {bat.selection_manifest} does not exist; give the selection.jsonl "
                "of an earlier run, or drop the flag to score again."
            )
        if bat.selection_manifest is not None and self.scoring.surrogate_lora is not None:
            raise ConfigError("--selection_manifest already holds the scores; --surrogate_lora would not be used. Drop one.")
        if bat.selection_manifest is not None and self.pool.shortlist is not None:
            raise ConfigError("--selection_manifest already holds the scores; --shortlist would not be used. Drop one.")
        check_shortlist_rule(self.pool, self.selection)
        if needs.scores != INFLUENCE and self.scoring.surrogate_lora is not None:
            raise ConfigError(
                f"--surrogate_lora is only used by rules that rank by influence scores (such as --selection "
                f"albat), not by --selection {selection}; drop it or change --selection."
            )

    @property
    def gamma(self) -> float:
        """γ as the final training uses it: 0 without selection, else the flag or its default."""
        if not self.selection.needs.candidates:
            return 0.0
        return DEFAULT_GAMMA if self.bat.augmentation_ratio is None else self.bat.augmentation_ratio

    @property
    def needs_surrogate(self) -> bool:
        """Stage 1 runs only for influence scores that no earlier manifest provides."""
        return self.selection.needs.scores == INFLUENCE and self.bat.selection_manifest is None

    @property
    def needs_scoring(self) -> bool:
        """Stage 2 runs for the scores the rule ranks by, unless an earlier manifest provides them."""
        return self.selection.needs.scores is not None and self.bat.selection_manifest is None

    @property
    def seed(self) -> int:
        return self.train.seed or 0

    def surrogate_config(self, output_dir: Path) -> TrainConfig:
        """Stage 1's run: the same DreamBooth settings on the subject alone, ``surrogate_steps`` long.

        No validation, no prior preservation (the surrogate defines the *adaptation* loss), checkpoints
        only for resuming an interrupted surrogate.
        """
        steps = self.bat.surrogate_steps
        return dataclasses.replace(
            self.train,
            output_dir=str(output_dir / SURROGATE_DIR),
            max_train_steps=steps,
            validation_prompt=None,
            validation_steps=None,
            validation_epochs=None,
            with_prior_preservation=False,
            class_data_dir=None,
            class_prompt=None,
            resume_from_checkpoint="latest",
            checkpointing_steps=max(steps // 4, 1),
            checkpoints_total_limit=1,
        )

    def score_settings(self, surrogate: Path | None) -> ScoreSettings:
        """Stage 2's scoring run: this run's inputs, pool, estimator and rule, with ``surrogate``
        (``None`` for scores that need none)."""
        scoring = self.scoring if surrogate is None else dataclasses.replace(self.scoring, surrogate_lora=str(surrogate))
        return ScoreSettings(inputs=self.train, pool=self.pool, scoring=scoring, selection=self.selection)

    @classmethod
    def from_flags(cls, **values: Any) -> BatSettings:
        """Build every group from flat flag names, as the command line would (``from_flags(rank=8, ...)``)."""
        return cls(*build_groups(cls.GROUPS, values))

    def to_dict(self) -> dict[str, Any]:
        """All groups as one JSON-ready dict (``dreambat_config.json``); ``bat.gamma`` is the γ used."""
        return {
            "train": self.train.to_dict(), "pool": dataclasses.asdict(self.pool),
            "scoring": dataclasses.asdict(self.scoring), "selection": dataclasses.asdict(self.selection),
            "bat": dataclasses.asdict(self.bat) | {"gamma": self.gamma},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path
