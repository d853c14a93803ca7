"""Typed, validated settings of a DreamBench evaluation and of a sample grid.

Dataclasses validate their own values in ``__post_init__`` (no file system access); the file
system is checked by :meth:`DreamBenchConfig.check_files`, which the runner calls before it loads
any model, so a typo costs seconds, not an hour of generation. :class:`SamplingSettings` and
:class:`GenerationSettings` are also setting groups of ``dreambat grid`` / ``dreambat eval``: each
field is a flag (see :mod:`dreambat.eval.flags`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from ..constants import LORA_WEIGHTS_NAME
from ..data.subject import list_subject_images
from ..errors import ConfigError, ModelNotFoundError, SubjectDataError
from ..fields import flag
from ..inputs import check_resolution
from .constants import (
    BASE_METHOD,
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_DEVICE,
    DEFAULT_DINO_MODEL,
    DEFAULT_DTYPE,
    DEFAULT_EVAL_BATCH_SIZE,
    DTYPES,
    MAX_IMAGES_PER_PROMPT,
    METRIC_NAMES,
    REAL_IMAGES,
    SCHEDULER_NAMES,
)
from .prompts import SUBJECT_PROMPT_TEMPLATE, DreamBenchPrompts, check_class_template

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_name(kind: str, name: str, flag: str) -> str:
    """A method or subject name, which becomes a folder name: letters, digits, ``_.+-``."""
    if not _SAFE_NAME.fullmatch(name or ""):
        raise ConfigError(
            f"{kind} name {name!r} cannot be a folder name; use letters, digits and _.+- "
            f"(starting with a letter or digit), e.g. {flag} my_method."
        )
    return name


@dataclass(frozen=True)
class Method:
    """One column of a comparison: the base model (``lora=None``) or a trained LoRA.

    ``lora`` is either a LoRA folder (holding ``pytorch_lora_weights.safetensors``, used for every
    subject) or a folder of per-subject LoRA folders ``lora/<subject>/``, as DreamBench needs.
    """

    name: str
    lora: Path | None = None

    def __post_init__(self):
        check_name("Method", self.name, "--method_name")
        if self.name == REAL_IMAGES:
            raise ConfigError(f"Method name '{self.name}' is reserved for the tables; pick another --method_name.")

    def single_lora(self) -> Path | None:
        """The LoRA folder used for every prompt (sample grids): it must hold the weights file itself."""
        if self.lora is not None and not (self.lora / LORA_WEIGHTS_NAME).is_file():
            raise ModelNotFoundError(
                f"No {LORA_WEIGHTS_NAME} in '{self.lora}' (method '{self.name}'); pass the output_dir "
                "of a training run."
            )
        return self.lora

    def lora_for(self, subject: str) -> Path | None:
        """The LoRA folder to load for ``subject`` (``None`` for the base model)."""
        if self.lora is None:
            return None
        if (self.lora / LORA_WEIGHTS_NAME).is_file():
            return self.lora
        if (self.lora / subject / LORA_WEIGHTS_NAME).is_file():
            return self.lora / subject
        if not self.lora.is_dir():
            state = "is a file" if self.lora.exists() else "does not exist"
            raise ModelNotFoundError(
                f"LoRA folder '{self.lora}' of method '{self.name}' {state}; pass the output_dir "
                f"of a training run (the folder that holds {LORA_WEIGHTS_NAME})."
            )
        raise ModelNotFoundError(
            f"Method '{self.name}': neither '{self.lora / LORA_WEIGHTS_NAME}' nor "
            f"'{self.lora / subject / LORA_WEIGHTS_NAME}' exists. Pass a LoRA folder, or a folder "
            f"with one LoRA folder per subject named like the subject ('{subject}')."
        )


def build_methods(lora_dirs: Sequence[str | Path], names: Sequence[str] | None = None, *,
                  include_base: bool = True) -> list[Method]:
    """Methods from LoRA folders; ``names`` default to the folder names, the base model is ``base``.

    Raises:
        ConfigError: names and folders differ in number, a name repeats, or nothing to compare.
    """
    names = list(names or [])
    if names and len(names) != len(lora_dirs):
        raise ConfigError(
            f"{len(names)} --method_name for {len(lora_dirs)} --lora_dir: give one name per LoRA "
            "folder, in the same order, or none (the folder names are used)."
        )
    methods = [Method(BASE_METHOD)] if include_base else []
    for index, lora in enumerate(lora_dirs):
        lora = Path(lora).expanduser()
        methods.append(Method(names[index] if names else lora.resolve().name, lora))
    if not methods:
        raise ConfigError("Nothing to evaluate: pass at least one --lora_dir or keep the base model.")
    seen: set[str] = set()
    for method in methods:
        if method.name in seen:
            raise ConfigError(
                f"Method name '{method.name}' is used twice (the base model is '{BASE_METHOD}'); "
                "pass --method_name once per --lora_dir with distinct names."
            )
        seen.add(method.name)
    return methods


@dataclass(frozen=True)
class DreamBenchSubject:
    """A subject: its real photos, its class noun, and whether it gets the live-subject prompts."""

    name: str
    folder: Path
    class_noun: str
    live: bool = False

    def __post_init__(self):
        check_name("Subject", self.name, "--subject")
        if not self.class_noun.strip():
            raise ConfigError(f"Subject '{self.name}' has an empty class noun; write --subject FOLDER=dog.")

    def images(self) -> list[Path]:
        """The subject's photo files (raises :class:`SubjectDataError` when there are none)."""
        return list_subject_images(self.folder)


def split_subject_spec(spec: str) -> tuple[Path, str, str]:
    """``FOLDER=CLASS[:live|object]`` -> ``(folder, class noun, kind)``, ``kind`` '' when not given.

    Only the spelling is checked (no file system access, no prompt file needed).
    """
    folder, sep, rest = spec.rpartition("=")
    if not sep or not folder or not rest:
        raise ConfigError(f"--subject {spec!r}: write FOLDER=CLASS, e.g. --subject ./dog2=dog.")
    noun, _, kind = rest.partition(":")
    if kind not in ("", "live", "object"):
        raise ConfigError(f"--subject {spec!r}: the suffix after ':' must be 'live' or 'object'.")
    return Path(folder).expanduser(), noun, kind


def parse_subject(spec: str, prompts: DreamBenchPrompts) -> DreamBenchSubject:
    """``FOLDER=CLASS``, optionally ``FOLDER=CLASS:live`` or ``:object`` (default: by class noun)."""
    path, noun, kind = split_subject_spec(spec)
    live = prompts.is_live(noun) if not kind else kind == "live"
    return DreamBenchSubject(path.resolve().name, path, noun.strip(), live)


def dreambench_subjects(root: str | Path, prompts: DreamBenchPrompts,
                        names: Sequence[str] | None = None) -> list[DreamBenchSubject]:
    """The subjects of a DreamBench ``dataset/`` folder, classes and live flags from the prompt file."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SubjectDataError(f"DreamBench folder '{root}' does not exist; pass the dataset/ folder of DreamBench.")
    table = prompts.subjects
    unknown = [name for name in names or [] if name not in table]
    if unknown:
        raise ConfigError(f"Unknown DreamBench subject(s) {unknown}; choose from {sorted(table)}.")
    chosen = list(names) if names else [name for name in table if (root / name).is_dir()]
    if not chosen:
        raise SubjectDataError(f"'{root}' holds none of the DreamBench subject folders ({', '.join(sorted(table))}).")
    return [DreamBenchSubject(name, root / name, *table[name]) for name in chosen]


@dataclass
class SamplingSettings:
    """How images are drawn: the flags a sample grid and a DreamBench run share.

    The defaults are DreamBench's (``dreambat grid`` lowers ``num_inference_steps`` to
    :data:`~dreambat.eval.constants.GRID_INFERENCE_STEPS`).
    """

    _argument_group_name: ClassVar[str] = "sampling"

    num_images: int = flag("Images (seeds) per prompt.", default=4)
    seed: int = flag("First seed.", default=0)
    num_inference_steps: int = flag("Sampler steps.", default=50)
    guidance_scale: float = flag("Classifier-free guidance scale.", default=7.5)
    resolution: int | None = flag("Image size, a multiple of 8 (default: the backbone's).", default=None)
    scheduler: str | None = flag("Sampler (default: the backbone folder's).", default=None,
                                 choices=SCHEDULER_NAMES)
    batch_size: int = flag("Images per pipeline call.", default=4)

    def __post_init__(self):
        if not 1 <= self.num_images <= MAX_IMAGES_PER_PROMPT:
            raise ConfigError(f"--num_images must be in [1, {MAX_IMAGES_PER_PROMPT}], got {self.num_images}.")
        for name in ("num_inference_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {value}.")
        check_resolution(self.resolution)
        if self.scheduler is not None and self.scheduler not in SCHEDULER_NAMES:
            raise ConfigError(f"Unknown --scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULER_NAMES)}.")


@dataclass
class GenerationSettings(SamplingSettings):
    """How DreamBench images are generated. Image ``i`` of prompt ``p`` uses seed ``seed + 1000 * p + i``,
    for every method and subject, whatever the batch size."""

    _argument_group_name: ClassVar[str] = "generation"

    unique_token: str = flag("The token the LoRAs were trained with.", default="sks")
    num_prompts: int | None = flag("Use only the first N prompt templates.", default=None)

    def __post_init__(self):
        super().__post_init__()
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ConfigError(f"--num_prompts must be a positive integer, got {self.num_prompts}.")
        if not self.unique_token.strip():
            raise ConfigError("--unique_token is empty; pass the token the LoRA was trained with, e.g. sks.")

    def seed_for(self, prompt_index: int, image_index: int) -> int:
        return self.seed + MAX_IMAGES_PER_PROMPT * prompt_index + image_index

    def fingerprint(self) -> dict:
        """The settings that change the pixels (batch size and prompt count do not)."""
        data = asdict(self)
        data.pop("batch_size")
        data.pop("num_prompts")
        return data


@dataclass
class PriorSettings:
    """What PRES and DIV (DreamBooth's prior preservation and diversity metrics) are measured on.

    Per (method, subject), ``num_prior_images`` images of the class prompt (``class_prompt_template``
    with the class noun: "a photo of a dog") and as many of the subject prompt
    (:data:`~dreambat.eval.prompts.SUBJECT_PROMPT_TEMPLATE`: "a photo of sks dog"). Image ``i`` of
    either uses seed ``seed + i`` (the generation seed), so a larger count extends the images on
    disk and a smaller one uses the first of them. PRES is the mean DINO cosine of the class-prompt
    images with the real photos (lower: the class prior kept); DIV the mean ``1 - cosine`` between
    the subject-prompt images' DINO embeddings (higher: more diverse). DreamBooth measures DIV with
    LPIPS; here it uses the DINO features, as no LPIPS weights are available offline.
    """

    _argument_group_name: ClassVar[str] = "prior preservation and diversity (PRES / DIV)"

    num_prior_images: int = flag("Images of the class prompt, and of the subject prompt, per method and subject "
                                 "for PRES and DIV (0: neither).", default=4)
    class_prompt_template: str = flag("PRES's class prompt, '{}' standing for the class noun.",
                                      default="a photo of a {}")

    def __post_init__(self):
        if not 0 <= self.num_prior_images <= MAX_IMAGES_PER_PROMPT:
            raise ConfigError(f"--num_prior_images must be in [0, {MAX_IMAGES_PER_PROMPT}] (0 turns PRES and DIV "
                              f"off), got {self.num_prior_images}.")
        check_class_template(self.class_prompt_template)

    @property
    def enabled(self) -> bool:
        return self.num_prior_images > 0

    def fingerprint(self) -> dict | None:
        """The prompts that change the pixels of the prior images (None when none are generated).

        The count is left out: image ``i`` does not depend on it.
        """
        if not self.enabled:
            return None
        return {"class_prompt_template": self.class_prompt_template, "subject_prompt_template": SUBJECT_PROMPT_TEMPLATE}


@dataclass
class EncoderSettings:
    """Which evaluators to load (see :mod:`dreambat.eval.encoders`)."""

    dino_model: str = DEFAULT_DINO_MODEL
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"--eval_batch_size must be a positive integer, got {self.batch_size}.")


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """Known, unique metric names, in the order given."""
    unknown = [name for name in metrics if name not in METRIC_NAMES]
    if unknown or not metrics:
        raise ConfigError(f"Unknown metric(s) {unknown or '(none given)'}; choose from {', '.join(METRIC_NAMES)}.")
    return tuple(dict.fromkeys(metrics))


@dataclass
class DreamBenchConfig:
    """Everything a DreamBench run needs; see ``eval/dreambench.py --help`` for the flags."""

    pretrained_model_name_or_path: str
    methods: list[Method]
    subjects: list[DreamBenchSubject]
    output_dir: Path
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    encoders: EncoderSettings = field(default_factory=EncoderSettings)
    metrics: tuple[str, ...] = METRIC_NAMES
    prompts_file: Path | None = None
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE
    revision: str | None = None
    prior: PriorSettings = field(default_factory=PriorSettings)

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        self.metrics = check_metrics(self.metrics)
        if not self.methods:
            raise ConfigError("No method to evaluate: pass --lora_dir and/or keep the base model.")
        if not self.subjects:
            raise ConfigError("No subject: pass --subject FOLDER=CLASS (repeatable) or --dreambench_dir.")
        for kind, names in (("method", [m.name for m in self.methods]), ("subject", [s.name for s in self.subjects])):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ConfigError(f"Duplicate {kind} name(s) {repeated}; every {kind} needs its own name.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"Unknown --dtype {self.dtype!r}; choose from {', '.join(DTYPES)}.")

    def check_files(self) -> CheckedInputs:
        """Check the file system before any model loads: backbone, subject photos, every LoRA.

        The backbone is resolved here, once; the run passes :attr:`CheckedInputs.backbone` on.

        Raises:
            ModelNotFoundError, SubjectDataError: with what to fix.
        """
        from ..backbone.load import resolve_backbone

        backbone = resolve_backbone(self.pretrained_model_name_or_path, self.revision)
        photos = {subject.name: subject.images() for subject in self.subjects}
        for method in self.methods:
            for subject in self.subjects:
                method.lora_for(subject.name)
        return CheckedInputs(backbone, photos)


@dataclass(frozen=True)
class CheckedInputs:
    """What :meth:`DreamBenchConfig.check_files` found: the local backbone folder and each subject's photos."""

    backbone: Path
    photos: dict[str, list[Path]]
