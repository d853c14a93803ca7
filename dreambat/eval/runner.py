"""The DreamBench run: check inputs, generate what is missing, score, write tables and a plot.

Layout of ``output_dir``::

    generation_settings.json           what the images were generated with (checked on resume)
    <method>/<subject>/<pp>_<seed>.png images: prompt index pp, seed = seed + 1000 * pp + i
    <method>/<subject>/prior/class_<seed>.png, subject_<seed>.png
                                       PRES / DIV images: class and subject prompt, seed = seed + i
    scores.csv / scores.json / scores.md / scores.png

A second run with the same settings generates nothing and recomputes the scores from the files on
disk; adding a method or a subject generates only its images. Images generated under other
settings (backbone, steps, guidance, scheduler, seeds, token, templates, a method's LoRA, the
class-prompt template) are refused up front rather than mixed in; ``--num_prior_images`` may change
(more generates the missing ones, fewer uses the first).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .. import preemption
from ..data.transforms import load_rgb
from ..errors import ConfigError, SubjectDataError
from ..files import atomic_write_text
from ..progress import progress as show_progress
from ..runlock import run_lock
from ..timing import Timer
from .config import DreamBenchConfig, DreamBenchSubject
from .constants import PRIOR_METRIC_NAMES, REAL_IMAGES
from .encoders import ClipEncoder, DinoEncoder, resolve_device
from .generation import ImageJob, image_path, load_pipeline, prior_image_path, run_jobs, torch_dtype
from .metrics import clip_i_score, clip_t_score, dino_score, div_score, mean_pairwise_cosine, pres_score
from .plots import plot_scores
from .prompts import SUBJECT_PROMPT_TEMPLATE, DreamBenchPrompts, class_prompt, clip_t_prompt, generation_prompt
from .tables import SubjectScore, write_tables

logger = logging.getLogger(__name__)

SETTINGS_FILE = "generation_settings.json"


@dataclass
class DreamBenchResult:
    """What a run did: its scores, the files written, images generated now vs. found on disk."""

    scores: list[SubjectScore]
    paths: dict[str, Path]
    generated: int
    reused: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedImage:
    """One generated image of a (method, subject) and the text CLIP-T compares it with."""

    job: ImageJob
    clip_t_text: str


def plan(config: DreamBenchConfig, prompts: DreamBenchPrompts) -> dict[tuple[str, str], list[PlannedImage]]:
    """Every image the run needs, keyed by ``(method, subject)``, sorted so each LoRA loads once."""
    settings = config.generation
    planned: dict[tuple[str, str], list[PlannedImage]] = {}
    for method in config.methods:
        for subject in config.subjects:
            lora = method.lora_for(subject.name)
            items = []
            for p, template in enumerate(prompts.templates(subject.live, settings.num_prompts)):
                text = generation_prompt(template, settings.unique_token, subject.class_noun)
                for i in range(settings.num_images):
                    seed = settings.seed_for(p, i)
                    path = image_path(config.output_dir, method.name, subject.name, p, seed)
                    items.append(PlannedImage(ImageJob(lora, text, seed, path), clip_t_prompt(template, subject.class_noun)))
            planned[(method.name, subject.name)] = items
    return planned


@dataclass(frozen=True)
class PriorImages:
    """The PRES and DIV images of one (method, subject): class-prompt and subject-prompt jobs (empty
    when ``--num_prior_images`` is 0)."""

    class_jobs: tuple[ImageJob, ...] = ()
    subject_jobs: tuple[ImageJob, ...] = ()

    @property
    def jobs(self) -> tuple[ImageJob, ...]:
        return self.class_jobs + self.subject_jobs


def plan_prior(config: DreamBenchConfig) -> dict[tuple[str, str], PriorImages]:
    """The PRES / DIV images of every ``(method, subject)``, keyed and ordered as :func:`plan`.

    Image ``i`` of the class prompt and of the subject prompt both use seed ``seed + i``.
    """
    settings, prior = config.generation, config.prior
    seeds = [settings.seed + i for i in range(prior.num_prior_images)]
    planned: dict[tuple[str, str], PriorImages] = {}
    for method in config.methods:
        for subject in config.subjects:
            lora = method.lora_for(subject.name)
            prompts = {"class": class_prompt(prior.class_prompt_template, subject.class_noun),
                       "subject": generation_prompt(SUBJECT_PROMPT_TEMPLATE, settings.unique_token, subject.class_noun)}
            jobs = {kind: tuple(ImageJob(lora, text, seed, prior_image_path(config.output_dir, method.name,
                                                                            subject.name, kind, seed))
                                for seed in seeds)
                    for kind, text in prompts.items()}
            planned[(method.name, subject.name)] = PriorImages(jobs["class"], jobs["subject"])
    return planned


def check_settings(config: DreamBenchConfig, prompts: DreamBenchPrompts, backbone: Path) -> dict:
    """Refuse an ``output_dir`` whose images came from other settings; returns the settings to record.

    ``backbone`` is the folder :meth:`DreamBenchConfig.check_files` resolved.
    """
    current = {
        "backbone": str(backbone.resolve()),
        "dtype": config.dtype,
        "generation": config.generation.fingerprint(),
        "prompts": {"object": list(prompts.object), "live": list(prompts.live)},
        "methods": {m.name: None if m.lora is None else str(m.lora.resolve()) for m in config.methods},
        "prior": config.prior.fingerprint(),
    }
    path = config.output_dir / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = [key for key in ("backbone", "dtype", "generation", "prompts") if previous.get(key) != current[key]]
        # a folder without PRES / DIV images (older, or --num_prior_images 0) takes any prior prompts
        if previous.get("prior") and current["prior"] and previous["prior"] != current["prior"]:
            changed.append("PRES / DIV prompts (--class_prompt_template)")
        current["prior"] = current["prior"] or previous.get("prior")
        changed += [f"method '{name}' LoRA" for name, lora in current["methods"].items()
                    if name in previous.get("methods", {}) and previous["methods"][name] != lora]
        if changed:
            raise ConfigError(
                f"'{config.output_dir}' holds images generated with other settings ({', '.join(changed)} "
                f"differ from {path}). Pass another --output_dir, or delete the old images to regenerate."
            )
        current["methods"] = {**previous.get("methods", {}), **current["methods"]}
    return current


def _load_images(paths: list[Path]) -> list[Image.Image]:
    return [load_rgb(path) for path in paths]


def load_photos(subject: DreamBenchSubject, paths: list[Path]) -> list[Image.Image]:
    """The subject's real photos, decoded; unreadable files are skipped with a warning."""
    images, skipped = [], []
    for path in paths:
        try:
            images.append(load_rgb(path))
        except (OSError, ValueError, EOFError, SyntaxError) as exc:
            skipped.append(f"{path.name} ({type(exc).__name__})")
    if not images:
        raise SubjectDataError(
            f"None of the images of subject '{subject.name}' in '{subject.folder}' could be read: "
            f"{', '.join(skipped)}. Replace them with valid photos."
        )
    if skipped:
        logger.warning("Subject '%s': skipped unreadable photo(s) %s", subject.name, ", ".join(skipped))
    return images


class _Scorer:
    """The evaluators a run needs, and the metrics of one set of generated images."""

    def __init__(self, config: DreamBenchConfig):
        needs_clip = {"clip_i", "clip_t"} & set(config.metrics)
        enc, device = config.encoders, resolve_device(config.device)
        self.metrics = config.metrics
        self.dino = DinoEncoder.load(enc.dino_model, device=device, batch_size=enc.batch_size) \
            if "dino" in config.metrics or config.prior.enabled else None
        self.clip = ClipEncoder.load(enc.clip_model, enc.clip_pretrained, device=device,
                                     batch_size=enc.batch_size) if needs_clip else None

    def embed(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        out = {}
        if self.dino is not None:
            out["dino"] = self.dino.embed_images(images)
        if self.clip is not None:
            out["clip"] = self.clip.embed_images(images)
        return out

    def score(self, generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor],
              texts: list[str]) -> dict[str, float]:
        values = {}
        if "dino" in self.metrics:
            values["dino"] = dino_score(generated["dino"], real["dino"])
        if "clip_i" in self.metrics:
            values["clip_i"] = clip_i_score(generated["clip"], real["clip"])
        if "clip_t" in self.metrics:
            unique = list(dict.fromkeys(texts))
            text_embeddings = self.clip.embed_texts(unique)
            values["clip_t"] = clip_t_score(generated["clip"], text_embeddings[[unique.index(t) for t in texts]])
        return values

    def prior(self, images: PriorImages, real: dict[str, torch.Tensor]) -> dict[str, float | None]:
        """PRES and DIV of one (method, subject) from its prior images on disk (``{}`` when there are none)."""
        if not images.class_jobs:
            return {}
        class_images = self.dino.embed_images(_load_images([job.path for job in images.class_jobs]))
        subject_images = self.dino.embed_images(_load_images([job.path for job in images.subject_jobs]))
        values = {"pres": pres_score(class_images, real["dino"]), "div": div_score(subject_images)}
        return {name: None if math.isnan(value) else value for name, value in values.items()}

    def real_vs_real(self, real: dict[str, torch.Tensor]) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for metric, key in (("dino", "dino"), ("clip_i", "clip")):
            if metric in self.metrics:
                value = mean_pairwise_cosine(real[key])
                values[metric] = None if math.isnan(value) else value
        return values


def _generate(config: DreamBenchConfig, backbone: Path, todo: list, progress: bool) -> int:
    """Generate the images of ``todo`` with the backbone folder ``backbone`` (one pipeline, loaded only
    when there is work); returns the count."""
    if not todo:
        return 0
    device = resolve_device(config.device)
    pipeline = load_pipeline(backbone, device=device, dtype=torch_dtype(config.dtype),
                             scheduler=config.generation.scheduler)
    with show_progress(total=len(todo), desc="generating", unit="img", disable=not progress) as bar:
        done = iter(range(1, len(todo) + 1))

        def on_image() -> None:
            bar.update(1)
            preemption.check(f"after {next(done)} of {len(todo)} images (each is saved in {config.output_dir}; "
                             "a rerun generates the rest)")

        generated = run_jobs(pipeline, todo, config.generation, on_image=on_image)
    del pipeline
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return generated


def run_dreambench(config: DreamBenchConfig, *, progress: bool = True) -> DreamBenchResult:
    """Run the DreamBench protocol for ``config`` (see the module docstring for the layout), holding
    the lock of ``config.output_dir`` (:mod:`dreambat.runlock`): one evaluation per folder at a time."""
    with run_lock(config.output_dir, what="evaluation"):
        return _run_dreambench(config, progress)


def _run_dreambench(config: DreamBenchConfig, progress: bool) -> DreamBenchResult:
    timer = Timer()
    with timer("checks_and_loading"):
        prompts = DreamBenchPrompts.load(config.prompts_file)
        checked = config.check_files()  # the one place the backbone is resolved
        photos = {s.name: load_photos(s, checked.photos[s.name]) for s in config.subjects}
        planned = plan(config, prompts)
        prior = plan_prior(config)
        recorded = check_settings(config, prompts, checked.backbone)
        scorer = _Scorer(config)  # before generation: a missing evaluator must not cost a generation run
        config.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config.output_dir / SETTINGS_FILE, json.dumps(recorded, indent=2) + "\n")

    # each (method, subject)'s prior images right after its DreamBench ones: one LoRA load for both
    jobs = [job for key, items in planned.items() for job in [*(item.job for item in items), *prior[key].jobs]]
    todo = [job for job in jobs if not job.path.is_file()]
    with timer("generation"):
        generated = _generate(config, checked.backbone, todo, progress)
    logger.info("Generated %d image(s); %d were already on disk.", generated, len(jobs) - len(todo))

    with timer("scoring"):
        scores = score_all(config, scorer, planned, photos, prior)
    seconds = timer.seconds
    settings = {
        "pretrained_model_name_or_path": config.pretrained_model_name_or_path,
        "methods": {m.name: None if m.lora is None else str(m.lora) for m in config.methods},
        "subjects": {s.name: {"folder": str(s.folder), "class_noun": s.class_noun, "live": s.live}
                     for s in config.subjects},
        "generation": asdict(config.generation),
        "prior": asdict(config.prior),
        "encoders": {"dino": getattr(scorer.dino, "name", None), "clip": getattr(scorer.clip, "name", None)},
        "prompts_file": str(prompts.source),
    }
    notes = [f"Evaluators: {', '.join(filter(None, settings['encoders'].values()))}. "
             f"{config.generation.num_images} image(s) per prompt, {config.generation.num_inference_steps} "
             f"sampler steps, guidance {config.generation.guidance_scale}."]
    table_metrics = config.metrics
    if config.prior.enabled:
        table_metrics += PRIOR_METRIC_NAMES
        subject_template = SUBJECT_PROMPT_TEMPLATE.format(config.generation.unique_token, "{}")
        notes.append(f"PRES / DIV: {config.prior.num_prior_images} image(s) each of the class prompt "
                     f"'{config.prior.class_prompt_template}' and the subject prompt '{subject_template}' "
                     "({} the class noun) per method and subject.")
    paths = write_tables(config.output_dir, scores, table_metrics, settings=settings, notes=notes)
    paths["png"] = plot_scores(scores, config.output_dir / "scores.png", config.metrics)
    return DreamBenchResult(scores, paths, generated, len(jobs) - len(todo), seconds)


def score_all(config: DreamBenchConfig, scorer: _Scorer, planned: dict[tuple[str, str], list[PlannedImage]],
              photos: dict[str, list[Image.Image]],
              prior: dict[tuple[str, str], PriorImages] | None = None) -> list[SubjectScore]:
    """Per-subject scores of every method (PRES / DIV from ``prior``'s images, where planned), plus the
    measured real-vs-real row per subject."""
    scores: list[SubjectScore] = []
    real_rows: list[SubjectScore] = []
    for subject in config.subjects:
        real = scorer.embed(photos[subject.name])
        common = _common(subject, len(photos[subject.name]))
        real_rows.append(SubjectScore(REAL_IMAGES, num_generated=0, **common, **scorer.real_vs_real(real)))
        for method in config.methods:
            items = planned[(method.name, subject.name)]
            generated = scorer.embed(_load_images([item.job.path for item in items]))
            values = scorer.score(generated, real, [item.clip_t_text for item in items])
            values.update(scorer.prior((prior or {}).get((method.name, subject.name), PriorImages()), real))
            scores.append(SubjectScore(method.name, num_generated=len(items), **common, **values))
    order = {method.name: index for index, method in enumerate(config.methods)}
    scores.sort(key=lambda score: order[score.method])
    return scores + real_rows


def _common(subject: DreamBenchSubject, num_real: int) -> dict:
    return {"subject": subject.name, "class_noun": subject.class_noun,
            "prompt_set": "live" if subject.live else "object", "num_real": num_real}
