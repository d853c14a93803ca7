"""Setting groups of ``dreambat eval`` / ``eval/dreambench.py`` and ``dreambat grid`` / ``eval/sample_grid.py``.

As for training and scoring, each group is a dataclass whose fields are the flags (help via
:func:`~dreambat.fields.flag`), validated in ``__post_init__``; :func:`dreambat.cli.parse_config`
parses a command line into them once. :class:`DreamBenchSettings` and :class:`GridSettings` bundle
the groups of a command and build the run's :class:`~dreambat.eval.config.DreamBenchConfig` /
:class:`~dreambat.eval.grids.GridConfig` from them, so nothing below the entry point sees a flag.

Repeatable flags (``--lora_dir A --lora_dir B``) are :func:`~dreambat.fields.repeated` fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..constants import LORA_WEIGHTS_NAME
from ..errors import ConfigError
from ..fields import build_groups, flag, repeated
from .config import (
    DreamBenchConfig,
    DreamBenchSubject,
    EncoderSettings,
    GenerationSettings,
    Method,
    PriorSettings,
    SamplingSettings,
    build_methods,
    check_metrics,
    dreambench_subjects,
    parse_subject,
    split_subject_spec,
)
from .constants import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_DEVICE,
    DEFAULT_DINO_MODEL,
    DEFAULT_DTYPE,
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_GRID_LAYOUT,
    DTYPES,
    GRID_LAYOUTS,
    METRIC_NAMES,
)
from .prompts import DreamBenchPrompts

if TYPE_CHECKING:
    from .grids import GridConfig


@dataclass
class MethodFlags:
    """The backbone, the methods compared on it (the base model and LoRAs), and where they run."""

    _argument_group_name: ClassVar[str] = "backbone and methods"

    pretrained_model_name_or_path: str = flag(
        "Backbone: a local diffusers Stable Diffusion folder, or a hub id already in your Hugging Face "
        "cache (nothing is downloaded)."
    )
    lora_dir: list[str] = repeated(
        f"Folder holding {LORA_WEIGHTS_NAME}, or one such folder per subject (<lora_dir>/<subject>/); "
        "repeat to compare several."
    )
    method_name: list[str] = repeated(
        "Name of each --lora_dir, in the same order (default: the folder names); repeat once per --lora_dir."
    )
    no_base: bool = flag("Leave the base model (method 'base') out.", default=False)
    device: str = flag("'auto' (CUDA if available), 'cpu', 'cuda:1', ...", default=DEFAULT_DEVICE)
    dtype: str = flag("dtype of the diffusion pipeline.", default=DEFAULT_DTYPE, choices=DTYPES)
    methods: list[Method] = field(init=False, repr=False)  # from the flags above, in __post_init__

    def __post_init__(self):
        # device and dtype are checked by the run's config (DreamBenchConfig / GridConfig)
        self.methods = build_methods(self.lora_dir, self.method_name, include_base=not self.no_base)


@dataclass
class BenchMethodFlags(MethodFlags):
    """:class:`MethodFlags` of a DreamBench run, which can also read a revision of a cached hub backbone."""

    revision: str | None = flag("Revision (branch, tag or commit) of a cached hub backbone.", default=None)


@dataclass
class SubjectFlags:
    """The subjects of a DreamBench run and the prompt templates they are shown with."""

    _argument_group_name: ClassVar[str] = "subjects and prompts"

    subject: list[str] = repeated(
        "A subject folder and its class noun (repeatable); live subjects get the live prompt set "
        "(default: class noun cat/dog).",
        metavar="FOLDER=CLASS[:live|object]",
    )
    dreambench_dir: str | None = flag("DreamBench dataset/ folder (its 30 subjects).", default=None)
    dreambench_subject: list[str] = repeated("With --dreambench_dir: only these subjects (repeatable).")
    prompts_file: str | None = flag("Prompt templates JSON (default: assets/dreambench).", default=None)

    def __post_init__(self):
        for spec in self.subject:
            split_subject_spec(spec)
        if self.dreambench_subject and not self.dreambench_dir:
            raise ConfigError("--dreambench_subject picks from --dreambench_dir: pass the DreamBench dataset/ "
                              "folder too, or use --subject FOLDER=CLASS for a folder of your own.")

    def subjects(self, prompts: DreamBenchPrompts) -> list[DreamBenchSubject]:
        """The ``--subject`` folders, then the DreamBench ones (lists ``--dreambench_dir``)."""
        subjects = [parse_subject(spec, prompts) for spec in self.subject]
        if self.dreambench_dir:
            subjects += dreambench_subjects(self.dreambench_dir, prompts, self.dreambench_subject)
        return subjects


@dataclass
class EvaluatorFlags:
    """The metrics and the evaluator models (read from local files or your Hugging Face cache)."""

    _argument_group_name: ClassVar[str] = "metrics and evaluators"

    metrics: list[str] = flag(f"Subset of {' '.join(METRIC_NAMES)}.", default_factory=lambda: list(METRIC_NAMES))
    dino_model: str = flag("DINO ViT: a transformers folder or cached hub id.", default=DEFAULT_DINO_MODEL)
    clip_model: str = flag("open_clip name, model-config JSON, or local-dir:FOLDER.", default=DEFAULT_CLIP_MODEL)
    clip_pretrained: str = flag("open_clip pretrained tag (from the Hugging Face cache) or checkpoint file.",
                                default=DEFAULT_CLIP_PRETRAINED)
    eval_batch_size: int = flag("Images per evaluator forward.", default=DEFAULT_EVAL_BATCH_SIZE)
    encoders: EncoderSettings = field(init=False, repr=False)  # the evaluator flags, checked

    def __post_init__(self):
        self.metrics = list(check_metrics(self.metrics))
        self.encoders = EncoderSettings(self.dino_model, self.clip_model, self.clip_pretrained, self.eval_batch_size)


@dataclass
class BenchOutputFlags:
    """Where a DreamBench run writes its images, tables and plot."""

    _argument_group_name: ClassVar[str] = "output"

    output_dir: str = flag("Images, tables and plot go here.", default="dreambench_results")
    no_progress: bool = flag("No progress bar.", default=False)


@dataclass
class DreamBenchSettings:
    """Every flag of ``dreambat eval``, grouped as in its ``--help``, and the run they describe.

    Building it loads the prompt file and lists ``--dreambench_dir`` (no model); ``config`` is
    then ready for :func:`~dreambat.eval.runner.run_dreambench`.
    """

    models: BenchMethodFlags
    generation: GenerationSettings
    prior: PriorSettings
    subjects: SubjectFlags
    evaluators: EvaluatorFlags
    output: BenchOutputFlags
    config: DreamBenchConfig = field(init=False, repr=False)

    GROUPS: ClassVar[tuple[type, ...]] = (BenchMethodFlags, GenerationSettings, PriorSettings, SubjectFlags,
                                          EvaluatorFlags, BenchOutputFlags)

    def __post_init__(self):
        prompts = DreamBenchPrompts.load(self.subjects.prompts_file)
        self.config = DreamBenchConfig(
            pretrained_model_name_or_path=self.models.pretrained_model_name_or_path,
            methods=self.models.methods,
            subjects=self.subjects.subjects(prompts),
            output_dir=self.output.output_dir,
            generation=self.generation,
            encoders=self.evaluators.encoders,
            metrics=tuple(self.evaluators.metrics),
            prompts_file=None if self.subjects.prompts_file is None else Path(self.subjects.prompts_file),
            device=self.models.device,
            dtype=self.models.dtype,
            revision=self.models.revision,
            prior=self.prior,
        )

    @classmethod
    def from_flags(cls, **values: Any) -> DreamBenchSettings:
        """Build every group from flat flag names, as the command line would (``from_flags(lora_dir=[...])``)."""
        return cls(*build_groups(cls.GROUPS, values))


@dataclass
class GridFlags:
    """What a sample grid shows and where it is written."""

    _argument_group_name: ClassVar[str] = "grid"

    prompt: list[str] = repeated("A prompt (repeat for several).", required=True)
    layout: str = flag("Rows (prompt, method) x columns seeds, or rows methods x columns prompts.",
                       default=DEFAULT_GRID_LAYOUT, choices=GRID_LAYOUTS)
    cell_size: int | None = flag("Cell side in pixels (default: max(96, image)).", default=None)
    output: str = flag("PNG file to write.", default="sample_grid.png")


@dataclass
class GridSettings:
    """Every flag of ``dreambat grid``, grouped as in its ``--help``, and the grid they describe."""

    models: MethodFlags
    sampling: SamplingSettings
    grid: GridFlags
    config: GridConfig = field(init=False, repr=False)

    GROUPS: ClassVar[tuple[type, ...]] = (MethodFlags, SamplingSettings, GridFlags)

    def __post_init__(self):
        from .grids import GridConfig

        self.config = GridConfig(
            pretrained_model_name_or_path=self.models.pretrained_model_name_or_path,
            methods=self.models.methods,
            prompts=self.grid.prompt,
            generation=self.sampling,
            layout=self.grid.layout,
            cell_size=self.grid.cell_size,
            device=self.models.device,
            dtype=self.models.dtype,
        )

    @classmethod
    def from_flags(cls, **values: Any) -> GridSettings:
        """Build every group from flat flag names, as the command line would."""
        return cls(*build_groups(cls.GROUPS, values))
