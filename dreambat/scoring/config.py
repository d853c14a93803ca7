"""Setting groups shared by ``dreambat score`` and ``train_dreambooth_bat.py``: the candidate pool,
the ALBAT estimator, and the selection rule. Each is defined and validated once, here; both entry
points parse them next to their own group (``HfArgumentParser`` takes several dataclasses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..albat import (
    AUTO_EXACT_MAX_REF,
    DEFAULT_DAMPING,
    NORMALIZATIONS,
    RULES,
    SCORING_PATHS,
    STRATEGIES,
    INFLUENCE,
    SIMILARITY,
    RuleNeeds,
    SelectionRule,
    SettingError,
    check_damping,
    get_rule,
    rule_class,
    rule_settings,
)
from ..data.shards import DEFAULT_MIN_IMAGE_SIZE, ShardReader
from ..errors import ConfigError
from ..eval.constants import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from ..fields import build_groups, flag
from ..files import atomic_write_text
from ..inputs import RunInputs
from .diffusion_task import OUTPUT_FUNCTIONS
from .draws import TIMESTEP_RULES, DrawDesign
from .retrieval import CLIP_QUERIES, IMAGE_QUERY, TEXT_QUERY


@dataclass
class PoolConfig:
    """Which backbone (pre-training) samples are candidates."""

    backbone_shards: list[str] = flag(
        "LAION-style webdataset shards of the backbone's pre-training data: paths, brace patterns "
        "('laion/{00000..00009}.tar') or pipe: URLs.",
        default_factory=list,
    )
    backbone_filter: list[str] = flag(
        "Metadata filters on the shards' json, e.g. 'width>=512' (repeatable).", default_factory=list
    )
    max_candidates: int | None = flag("Consider at most this many backbone candidates (stream order).", default=None)
    candidate_ratio: float = flag(
        "Fraction of the backbone pool to consider at all, drawn by a hash of each sample's key "
        "(the paper's sample ratio).",
        default=1.0,
    )
    strict_shards: bool = flag(
        "Refuse the run when a backbone shard holds no usable sample (an empty tar, as img2dataset "
        "writes when every download of a shard failed) instead of skipping it with a warning.",
        default=False,
    )
    min_image_size: int = flag(
        "Skip candidates whose decoded image is smaller than this many pixels on its shorter side "
        "(thumbnails and tracking pixels, upscaled, are noise whose gradients dwarf real images'); "
        "counted in the report. 0 keeps every size; --backbone_filter 'width>=512' filters on the "
        "metadata before decoding.",
        default=DEFAULT_MIN_IMAGE_SIZE,
    )
    min_clip_score: float | None = flag(
        "Caption–image consistency filter: skip candidates whose CLIP cosine between their image and "
        "their own caption is below this (LAION was filtered at 0.28 with ViT-B/32), before any "
        "scoring, with the model of --clip_model/--clip_pretrained; counted in the report, and each "
        "record keeps its cosine. Works with every --selection.",
        default=None,
    )
    shortlist: int | None = flag(
        "A cheap first stage for large pools: rank every candidate by CLIP similarity (to the subject "
        "photos, or to --shortlist_prompt with --shortlist_query text; encoder --clip_model) in one "
        "streamed, resumable pass, keep the top N, and compute the selection rule's scores (ALBAT's) for "
        "those N only. The first stage's manifest and report go to OUTPUT_DIR/shortlist/; the final "
        "manifest lists every candidate, each with its first-stage score, the others skipped as "
        "not_shortlisted.",
        default=None,
    )
    shortlist_query: str = flag(
        "--shortlist: what the first stage ranks by closeness to. image: the subject photos (the "
        "normalised mean of their CLIP image embeddings); text: the CLIP text embedding of --shortlist_prompt.",
        default=IMAGE_QUERY, choices=CLIP_QUERIES,
    )
    shortlist_prompt: str | None = flag(
        "--shortlist_query text: the prompt the first stage ranks by, naming the class without the subject "
        "token, e.g. 'a photo of a dog'.",
        default=None,
    )
    shortlist_embeddings: str | None = flag(
        "--shortlist: read the candidates' CLIP image embeddings from this folder instead of computing "
        "them (clip-retrieval's layout, as LAION ships them: img_emb/img_emb_<n>.npy beside "
        "metadata/metadata_<n>.parquet, rows matched to shard samples by key). --clip_model and "
        "--clip_pretrained must name the model that computed them (the query is embedded with it).",
        default=None,
    )
    shortlist_key_column: str = flag(
        "--shortlist_embeddings: the metadata column holding each row's webdataset key.", default="key"
    )

    def __post_init__(self) -> None:
        self._check_shortlist()
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"--max_candidates must be >= 1 when given, got {self.max_candidates}.")
        if not 0.0 < self.candidate_ratio <= 1.0:
            raise ConfigError(f"--candidate_ratio must be in (0, 1], got {self.candidate_ratio}.")
        if self.min_image_size < 0:
            raise ConfigError(f"--min_image_size must be >= 0, got {self.min_image_size}.")
        if self.min_clip_score is not None and not -1.0 <= self.min_clip_score <= 1.0:
            raise ConfigError(f"--min_clip_score is a cosine, in [-1, 1]; got {self.min_clip_score}.")

    def _check_shortlist(self) -> None:
        if self.shortlist is not None and self.shortlist < 1:
            raise ConfigError(f"--shortlist keeps the N most similar candidates: N must be >= 1, got {self.shortlist}.")
        if self.shortlist_query not in CLIP_QUERIES:
            raise ConfigError(f"--shortlist_query must be one of {', '.join(CLIP_QUERIES)}, got {self.shortlist_query!r}.")
        if self.shortlist is None and (self.shortlist_query != IMAGE_QUERY or self.shortlist_prompt is not None
                                       or self.shortlist_embeddings is not None):
            raise ConfigError("--shortlist_query, --shortlist_prompt and --shortlist_embeddings set the first stage "
                              "of --shortlist N: add --shortlist N, or drop them.")
        if self.shortlist_query == TEXT_QUERY and not (self.shortlist_prompt or "").strip():
            raise ConfigError("--shortlist_query text ranks candidates by closeness to a prompt: pass "
                              "--shortlist_prompt naming the class, e.g. --shortlist_prompt 'a photo of a dog'.")
        if self.shortlist_query != TEXT_QUERY and self.shortlist_prompt is not None:
            raise ConfigError("--shortlist_prompt is only read with --shortlist_query text: add it, or drop "
                              "--shortlist_prompt.")

    def reader(self, shards: Sequence[str], *, rank: int = 0, world_size: int = 1) -> ShardReader:
        """The candidates of ``shards`` (the usable ones of this pool) under this pool's settings."""
        return ShardReader(
            list(shards), max_candidates=self.max_candidates, filters=self.backbone_filter, rank=rank,
            world_size=world_size, sample_ratio=self.candidate_ratio, min_image_size=self.min_image_size,
        )


@dataclass
class ScoringConfig:
    """How ALBAT estimates each candidate's influence on the subject loss."""

    surrogate_lora: str | None = flag(
        "A trained LoRA (folder or .safetensors) to score with. Required by `dreambat score`; in "
        "a BAT run it replaces the surrogate the run would train.",
        default=None,
    )
    num_score_timesteps: int = flag(
        "K: timestep strata the per-sample ALBAT loss averages over; each candidate gets one (timestep, "
        "noise) draw per stratum, i.e. K UNet rows (2K with --antithetic, the default).",
        default=8,
    )
    reference_draws: int = flag(
        "Noise draws per subject photo in each of the K strata (pairs with --antithetic): the reference "
        "(subject) side, fitted once, gets photos x K x this rows (x 2 with --antithetic). Raise it "
        "when a run says its reliability is limited by the reference.",
        default=64,
    )
    score_seed: int = flag(
        "Seed of the scoring draws (timesteps and noise); scores are a pure function of the settings "
        "and this seed, and two seeds are two independent estimates.",
        default=0,
    )
    common_noise: bool = flag(
        "Common random numbers: every candidate gets the same noise in a given draw slot, so the noise "
        "they share cancels out of their ranking. The subject photos keep their own noise (shared "
        "noise there biases the direction; measured in BENCHMARKS.md). --no_common_noise turns it off.",
        default=True,
    )
    antithetic: bool = flag(
        "Antithetic draws: each noise draw ε is paired with −ε at the same timestep (the largest "
        "variance reduction measured). --no_antithetic turns it off.",
        default=True,
    )
    score_timesteps: str = flag(
        "Timesteps of the draws: the centre of each stratum, or uniform within it (seeded).", default="centres",
        choices=TIMESTEP_RULES,
    )
    normalize_timesteps: bool = flag(
        "Weight each timestep so its reference gradients have the same RMS norm (the gradients of "
        "some timesteps are orders of magnitude larger and otherwise dominate every score).",
        default=False,
    )
    score_output: str = flag(
        "What is differentiated: mse, the training loss ‖ε_θ − ε‖²; or square, D-TRAK's ‖ε_θ‖².",
        default="mse", choices=OUTPUT_FUNCTIONS,
    )
    score_normalization: str = flag(
        "What a score ranks by: none, Z = ⟨h, ∇ℓ(x)⟩ (the paper's formula; it grows with the "
        "candidate's gradient norm, so pairs whose caption does not fit their image, with large losses, "
        "crowd both ends); candidate, the cosine of h and the candidate's gradient ∇ℓ(x); timestep, "
        "the mean over the K draws of the cosine of h and each draw's gradient. The default, candidate, "
        "was chosen on the world's LAION-like pool (BENCHMARKS.md, \"Web junk\").",
        default="candidate", choices=NORMALIZATIONS,
    )
    curvature: str = flag(
        "Inverse-curvature strategy: exact (Woodbury), datainf (Sherman-Morrison after swapping "
        "inverse and average), identity (gradient similarity); auto = exact while min(reference rows, "
        f"largest LoRA block) is at most {AUTO_EXACT_MAX_REF}, else datainf.",
        default="auto", choices=("auto", *STRATEGIES),
    )
    damping: float = flag("c in the per-block damping λ_l = c · mean‖g‖² / d_l.", default=DEFAULT_DAMPING)
    score_batch_size: int = flag("Candidates per scoring forward/backward.", default=8)
    scoring_path: str = flag(
        "fast: hook-contracted scores; reference: plain per-sample backward loop (slow, for checks).",
        default="fast", choices=SCORING_PATHS,
    )
    overwrite_manifest: bool = flag(
        "Discard a selection.jsonl in the output folder that was scored with other settings.", default=False
    )

    def __post_init__(self) -> None:
        for name in ("num_score_timesteps", "score_batch_size", "reference_draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        try:
            check_damping(self.damping)
        except SettingError as error:
            raise worded(error) from None

    def candidate_design(self) -> DrawDesign:
        """The draws of each candidate's loss."""
        return DrawDesign(
            self.num_score_timesteps, 1, antithetic=self.antithetic, common_noise=self.common_noise,
            timesteps=self.score_timesteps, seed=self.score_seed,
        )

    def reference_design(self) -> DrawDesign:
        """The draws of each subject photo's loss (``reference_draws`` per stratum, noise of its own)."""
        return dataclasses.replace(self.candidate_design(), draws_per_timestep=self.reference_draws,
                                   common_noise=False)

    def estimator(self) -> dict[str, Any]:
        """The settings a score depends on (for fingerprints and reports)."""
        names = ("num_score_timesteps", "reference_draws", "score_seed", "common_noise", "antithetic",
                 "score_timesteps", "normalize_timesteps", "score_output", "score_normalization", "curvature",
                 "damping")
        return {name: getattr(self, name) for name in names}


# The selection group's flags, by the core's names of the settings they carry.
KEEP_FLAGS: dict[str, str] = {
    "num_samples": "num_backbone_samples", "threshold": "score_threshold", "fraction": "backbone_fraction",
}
OPTION_FLAGS: dict[str, str] = {"force": "keep_nonpositive", "max_norm_ratio": "max_grad_norm_ratio"}
# Settings of the other core objects the flags configure (curvature strategy, scorer).
CORE_FLAGS: dict[str, str] = {"damping": "damping"}


def _flag(setting: str) -> str:
    name = {**KEEP_FLAGS, **OPTION_FLAGS, **CORE_FLAGS}.get(setting, setting)
    return f"--{name}"


def worded(error: SettingError) -> ConfigError:
    """The core's :class:`~dreambat.albat.errors.SettingError` in the command line's words."""
    rule = error.owner.removeprefix("selection rule ").strip("'")
    is_rule = error.owner.startswith("selection rule")
    choices = [_flag(s.strip()) for s in error.expected.split(",") if s.strip() in {**KEEP_FLAGS, **OPTION_FLAGS}]
    if error.problem == "unknown":
        return ConfigError(f"Unknown --selection {error.value!r}; choose one of: {error.expected}.")
    if error.problem == "missing" and is_rule:
        return ConfigError(f"--selection {rule} keeps a count: pass {' or '.join(choices)}.")
    if error.problem == "unexpected" and is_rule:
        ways = f"use {' or '.join(choices)}" if choices else "drop it"
        return ConfigError(f"--selection {rule} does not take {_flag(error.setting)}: {ways}.")
    if error.problem == "conflict":
        given = ", ".join(_flag(s.strip()) for s in error.setting.split(","))
        return ConfigError(f"Give at most one of {given}: each sets how many candidates to keep.")
    return ConfigError(f"{_flag(error.setting)} must be {error.expected}, got {error.value!r}.")


def word_message(message: str | None) -> str | None:
    """A rule's advice (``SelectionResult.message``) with the core's setting names as flags."""
    if message is None:
        return None
    for setting, name in OPTION_FLAGS.items():
        message = message.replace(f"{setting}=True", f"--{name}")
    return message


# Measured on the world's LAION-like pool: with the candidate cosine, a cap at 1.5x the median
# gradient norm keeps mismatched captions and off-domain images at or below a tenth of their pool
# share in every top N from 10 to 200 (BENCHMARKS.md, "Web junk").
DEFAULT_MAX_GRAD_NORM_RATIO = 1.5


def _selection_help() -> str:
    return "Backbone selection: " + ", ".join(f"{name} ({rule.help})" for name, rule in RULES.items()) + "."


@dataclass
class SelectionConfig:
    """Which scored candidates join the training mixture."""

    selection: str = flag(_selection_help(), default="albat", choices=RULES.keys())
    num_backbone_samples: int | None = flag("Keep the top N candidates (random: N at random).", default=None)
    score_threshold: float | None = flag("ALBAT: keep candidates with Z ≥ η.", default=None)
    backbone_fraction: float | None = flag("Keep this fraction of the scored pool.", default=None)
    keep_nonpositive: bool = flag(
        "Allow keeping candidates with Z ≤ 0, which are predicted not to help.", default=False
    )
    max_grad_norm_ratio: float | None = flag(
        "ALBAT: never keep a candidate whose gradient norm is above this multiple of the pool's median "
        "(web pairs whose caption does not fit the image, and off-domain images, have several times the "
        "gradient of clean pairs). Applied when selecting, so changing it reuses the scores; the default "
        "was chosen on the world's LAION-like pool (BENCHMARKS.md, \"Web junk\"). 0 turns it off.",
        default=DEFAULT_MAX_GRAD_NORM_RATIO,
    )
    clip_model: str = flag(
        "--selection clip: the open_clip model (a name such as ViT-B-32, a model-config JSON, or "
        "local-dir:FOLDER), read from local files or your Hugging Face cache.",
        default=DEFAULT_CLIP_MODEL,
    )
    clip_pretrained: str = flag(
        "--selection clip: the open_clip pretrained tag (read from the cache) or a checkpoint file.",
        default=DEFAULT_CLIP_PRETRAINED,
    )
    clip_query: str = flag(
        "--selection clip: what candidates are ranked by closeness to. image: the subject photos (the "
        "normalised mean of their CLIP image embeddings); text: the CLIP text embedding of "
        "--clip_query_prompt, Custom Diffusion's real prior (real images of the class, which train on "
        "their own captions).",
        default=IMAGE_QUERY, choices=CLIP_QUERIES,
    )
    clip_query_prompt: str | None = flag(
        "--clip_query text: the prompt candidates are retrieved by, naming the class without the subject "
        "token, e.g. 'a photo of a dog'. Its own flag, not --class_prompt: that one names the generated "
        "class images of --with_prior_preservation, which `dreambat score` does not have.",
        default=None,
    )

    def __post_init__(self) -> None:
        self.rule(seed=0)  # every check of the rule's declared needs, and of the values, in one place
        self._check_clip_query()

    def _check_clip_query(self) -> None:
        if self.clip_query not in CLIP_QUERIES:
            raise ConfigError(f"--clip_query must be one of {', '.join(CLIP_QUERIES)}, got {self.clip_query!r}.")
        if self.clip_query != TEXT_QUERY:
            if self.clip_query_prompt is not None:
                raise ConfigError("--clip_query_prompt is only read with --clip_query text: add --clip_query text "
                                  "to retrieve candidates by that prompt, or drop it.")
            return
        similarity = [name for name, rule in RULES.items() if rule.needs.scores == SIMILARITY]
        if self.needs.scores != SIMILARITY:
            raise ConfigError(f"--clip_query text sets what --selection {' or '.join(similarity)} ranks by; "
                              f"--selection {self.selection} does not use it. Drop it, or change --selection.")
        if not (self.clip_query_prompt or "").strip():
            raise ConfigError("--clip_query text ranks candidates by closeness to a prompt: pass "
                              "--clip_query_prompt naming the class, e.g. --clip_query_prompt 'a photo of a dog'.")

    @property
    def clip_query_phrase(self) -> str:
        """What CLIP retrieval ranks by, in words: ``the subject photos`` or ``the prompt '...'``."""
        return f"the prompt '{self.clip_query_prompt}'" if self.clip_query == TEXT_QUERY else "the subject photos"

    @property
    def needs(self) -> RuleNeeds:
        """What the chosen rule declares it needs."""
        try:
            return rule_class(self.selection).needs
        except SettingError as error:
            raise worded(error) from None

    @property
    def keep_given(self) -> dict[str, Any]:
        """The keep settings given, by the core's names (``num_samples``, ``threshold``, ``fraction``)."""
        return {core: getattr(self, name) for core, name in KEEP_FLAGS.items() if getattr(self, name) is not None}

    def rule(self, seed: int) -> SelectionRule:
        """The selection rule object, built from the registry (a rule that keeps nothing ignores
        the keep flags)."""
        try:
            cls = rule_class(self.selection)
            if not cls.needs.candidates:
                return cls()
            options = {core: getattr(self, name) for core, name in OPTION_FLAGS.items()} | {"seed": seed}
            if not options["max_norm_ratio"]:  # 0: no cap
                options["max_norm_ratio"] = None
            return get_rule(self.selection, **rule_settings(self.selection, self.keep_given, options=options))
        except SettingError as error:
            raise worded(error) from None


@dataclass
class ScoreInputs(RunInputs):
    """:class:`~dreambat.inputs.RunInputs` of ``dreambat score`` (outputs default to ./dreambat-scores)."""

    DEFAULT_OUTPUT_DIR: ClassVar[str] = "dreambat-scores"


@dataclass
class ScoreSettings:
    """Every setting of a scoring run, grouped as on the command line of ``dreambat score``."""

    inputs: RunInputs
    pool: PoolConfig
    scoring: ScoringConfig
    selection: SelectionConfig

    GROUPS: ClassVar[tuple[type, ...]] = (ScoreInputs, PoolConfig, ScoringConfig, SelectionConfig)

    def __post_init__(self) -> None:
        if self.selection.needs.candidates and not self.pool.backbone_shards:
            raise ConfigError(
                f"--selection {self.selection.selection} needs candidates: pass --backbone_shards "
                "(e.g. 'laion/{00000..00009}.tar')."
            )
        check_shortlist_rule(self.pool, self.selection)

    @property
    def scores(self) -> str:
        """The scores this run computes: those its rule ranks by, else ALBAT's influence scores."""
        return self.selection.needs.scores or INFLUENCE

    @property
    def seed(self) -> int:
        """Seed of the random selection baseline."""
        return self.inputs.seed or 0

    @classmethod
    def from_flags(cls, **values: Any) -> ScoreSettings:
        """Build every group from flat flag names, as the command line would (``from_flags(rank=8, ...)``)."""
        return cls(*build_groups(cls.GROUPS, values))

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": dataclasses.asdict(self.inputs), "pool": dataclasses.asdict(self.pool),
            "scoring": dataclasses.asdict(self.scoring), "selection": dataclasses.asdict(self.selection),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def check_shortlist_rule(pool: PoolConfig, selection: SelectionConfig) -> None:
    """``--shortlist`` narrows what a rule's scores are computed for: a rule that reads no score has none to narrow."""
    if pool.shortlist is not None and selection.needs.scores is None:
        raise ConfigError(
            f"--shortlist N narrows the candidates that scores are computed for; --selection {selection.selection} "
            "reads no score. Drop --shortlist, or pick a rule that ranks by scores (albat, clip)."
        )


def check_score_command(settings: ScoreSettings) -> None:
    """What ``dreambat score`` needs beyond the groups' own checks."""
    if settings.scoring.surrogate_lora is None and settings.scores == INFLUENCE:
        raise ConfigError(
            "dreambat score needs --surrogate_lora: the folder of a short DreamBooth-LoRA run on the "
            "subject (e.g. `train_dreambooth_bat.py --selection none --max_train_steps 200`)."
        )
