"""Ground-truth metrics the world makes possible, next to DreamBench's DINO / CLIP-I / CLIP-T.

* **Held-out denoising loss** (:class:`HeldoutLoss`): the DreamBooth loss of a LoRA on the
  subject's *held-out* photos (never trained on), at K fixed timesteps with noise fixed per
  (photo, timestep), so two LoRAs are compared on exactly the same noisy inputs. Lower is better:
  it measures how well the LoRA models the subject itself, with no sampler or evaluator between.
* **Attribute fidelity** (:func:`attribute_scores`): the world's attribute classifier reads each
  generated image of a DreamBench run back. *Subject fidelity* is the fraction of images that
  show the subject's shape, colour and pattern (minus any attribute the prompt asks to change);
  *prompt fidelity* is the fraction that show what the prompt asked for (the background colour,
  or the new colour / pattern), over the prompts that ask for something the classifier reads.
* **Class-prompt drift** (:func:`class_subject_fidelity`): the same subject-fidelity read-back of
  the images of the bare class prompt ("a photo of a star", no unique token) that DreamBench's PRES
  is measured on: the share of them that draw the subject's exact design. Lower is better: a LoRA
  that draws its subject for every star has overwritten the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreambat.backbone.load import load_backbone
from dreambat.data.transforms import ImageTransform, load_rgb
from dreambat.errors import ConfigError
from dreambat.eval.config import DreamBenchConfig, PriorSettings
from dreambat.eval.prompts import DreamBenchPrompts
from dreambat.eval.runner import plan, plan_prior
from dreambat.lora import load_lora, unload_lora
from dreambat.pivotal import expand_prompts, load_new_tokens
from dreambat.scoring.diffusion_task import DiffusionLossTask

from .classifiers import AttributeClassifier
from .data import ASSETS_DIR, SUBJECTS_DIR
from .prompts import load_templates
from .subjects import Subject, subject_by_name, subject_photos

SCORED_CHANGES = ("color", "pattern", "background")
"""Prompt changes the attribute classifier can read back (it has no size/position/texture heads)."""


class HeldoutLoss:
    """The denoising loss of a backbone, with or without a LoRA, on a subject's held-out photos.

    One backbone is loaded; LoRAs are swapped in and out with :func:`dreambat.lora.load_lora` /
    :func:`~dreambat.lora.unload_lora`.

    Args:
        backbone: a diffusers folder or cached hub id (see :func:`~dreambat.backbone.load.load_backbone`).
        num_timesteps: K fixed timesteps spread evenly over the schedule.
        batch_size: photos per UNet call (each becomes K rows).
    """

    def __init__(self, backbone: str | Path, *, num_timesteps: int = 20, batch_size: int = 8):
        self.backbone = load_backbone(str(backbone))
        self.task = DiffusionLossTask(self.backbone, num_timesteps)
        self.batch_size = batch_size
        self.transform = ImageTransform(self.backbone.native_resolution, center_crop=True)

    def __call__(self, subject: Subject | str, prompt: str, lora: str | Path | None = None,
                 photos: Sequence[Path] | None = None) -> float:
        """Mean loss over the held-out photos and K timesteps.

        Args:
            subject: a world subject (or its name); its generated held-out photos are used
                unless ``photos`` (image files) is given.
            prompt: the instance prompt the LoRA was trained with, e.g. ``"a photo of sks star"``.
            lora: a folder holding ``pytorch_lora_weights.safetensors`` (None: the bare backbone).
        """
        subject = subject_by_name(subject) if isinstance(subject, str) else subject
        images = [load_rgb(p) for p in photos] if photos is not None else subject_photos(subject, "heldout")
        if not images:
            raise ConfigError(f"No held-out photos for subject '{subject.name}'.")
        if lora is not None:
            load_lora(lora, self.backbone.unet, self.backbone.text_encoder)
            (prompt,) = expand_prompts([prompt], load_new_tokens(lora, self.backbone.tokenizer, self.backbone.text_encoder))
        try:
            losses = []
            with torch.no_grad():
                for start in range(0, len(images), self.batch_size):
                    chunk = images[start:start + self.batch_size]
                    batch = {
                        "pixel_values": torch.stack([self.transform(im) for im in chunk]),
                        "prompts": [prompt] * len(chunk),
                        "keys": [f"{subject.name}/heldout/{start + i}" for i in range(len(chunk))],
                    }
                    losses.append(self.task.loss_matrix(batch))
        finally:
            if lora is not None:
                unload_lora(self.backbone.unet, self.backbone.text_encoder)
        return float(torch.cat(losses).mean())


@dataclass(frozen=True)
class AttributeScore:
    """Classifier read-back of one (method, subject) of a DreamBench run over the world prompts."""

    method: str
    subject: str
    subject_fidelity: float
    """Images showing the subject's shape, colour and pattern (the unchanged ones)."""
    subject_shape: float
    prompt_fidelity: float | None
    """Images showing what the prompt asked for, over prompts with a readable change."""
    num_images: int
    num_prompt_scored: int


def _expectations(template: str, changes: dict[str, str], subject: Subject) -> tuple[dict, dict]:
    d = subject.design
    keep = {k: v for k, v in {"shape": d.shape, "color": d.color, "pattern": d.pattern}.items()
            if k not in changes}
    asked = {k: v for k, v in changes.items() if k in SCORED_CHANGES}
    return keep, asked


def _shows(wanted: dict[str, str], got: dict[str, str]) -> bool:
    # the classifier's own rule: stripes and checks show two colours in equal halves, so which one
    # it calls the object colour is a convention; either one counts
    return all(AttributeClassifier.matches(got, k, v) for k, v in wanted.items())


def shows_subject(predictions: Sequence[dict[str, str]], subject: Subject) -> float:
    """Fraction of classifier predictions that read ``subject``'s shape, colour and pattern (NaN for none)."""
    d = subject.design
    wanted = {"shape": d.shape, "color": d.color, "pattern": d.pattern}
    return float(np.mean([_shows(wanted, p) for p in predictions])) if predictions else float("nan")


def attribute_scores(config: DreamBenchConfig, classifier: Any) -> list[AttributeScore]:
    """Read the images of a finished :func:`~dreambat.eval.runner.run_dreambench` back.

    ``config`` is the run's config: its subjects must be world subjects (by name) and its
    ``prompts_file`` a world prompt file (templates with expected changes).
    """
    prompts = DreamBenchPrompts.load(config.prompts_file)
    changes = {t.template: t.changes for t in load_templates(config.prompts_file)}
    templates = prompts.templates(False, config.generation.num_prompts)
    out = []
    for (method, subject_name), items in plan(config, prompts).items():
        subject = subject_by_name(subject_name)
        per_image = []
        for item in items:
            template = templates[int(item.job.path.name.split("_")[0])]  # <prompt index>_<seed>.png
            per_image.append(_expectations(template, changes[template], subject))
        predictions = classifier.predict([load_rgb(item.job.path) for item in items])
        keep = np.mean([_shows(k, p) for p, (k, _) in zip(predictions, per_image)])
        shape = np.mean([p["shape"] == subject.design.shape for p in predictions])
        asked = [_shows(a, p) for p, (_, a) in zip(predictions, per_image) if a]
        out.append(AttributeScore(method, subject_name, float(keep), float(shape),
                                  float(np.mean(asked)) if asked else None, len(items), len(asked)))
    return out


def class_subject_fidelity(config: DreamBenchConfig, classifier: Any) -> dict[tuple[str, str], float | None]:
    """Per ``(method, subject)``, the share of its class-prompt images (the PRES images of a finished
    :func:`~dreambat.eval.runner.run_dreambench`) that show the subject's shape, colour and pattern.

    None where the run made none (``num_prior_images=0``). Subjects must be world subjects (by name).
    """
    out: dict[tuple[str, str], float | None] = {}
    for (method, subject_name), images in plan_prior(config).items():
        if not images.class_jobs:
            out[(method, subject_name)] = None
            continue
        predictions = classifier.predict([load_rgb(job.path) for job in images.class_jobs])
        out[(method, subject_name)] = shows_subject(predictions, subject_by_name(subject_name))
    return out


WORLD_METRICS = ("heldout_loss", "dino", "clip_i", "clip_t", "subject_fidelity", "prompt_fidelity",
                 "pres", "div", "class_subject_fidelity")
"""Columns of :func:`evaluate_world`'s table, in order."""


@dataclass(frozen=True)
class WorldScore:
    """Every world metric of one method on one subject."""

    method: str
    subject: str
    heldout_loss: float
    dino: float | None
    clip_i: float | None
    clip_t: float | None
    subject_fidelity: float
    subject_shape: float
    prompt_fidelity: float | None
    num_images: int
    pres: float | None = None
    """DreamBench's PRES (lower is better): DINO cosine of class-prompt images with the held-out photos."""
    div: float | None = None
    """DreamBench's DIV (higher is better): mean 1 - DINO cosine between subject-prompt images."""
    class_subject_fidelity: float | None = None
    """Class-prompt drift (lower is better): share of class-prompt images showing the subject's design."""


def subject_heldout_dir(subject: Subject | str) -> Path:
    """The committed held-out photos of a world subject (the DreamBench reference images)."""
    name = subject if isinstance(subject, str) else subject.name
    folder = ASSETS_DIR / SUBJECTS_DIR / name / "heldout"
    if not folder.is_dir():
        raise ConfigError(f"No held-out photos at {folder}; restore assets/world/subjects (scripts/make_world.py).")
    return folder


def evaluate_world(backbone: str | Path, methods: dict[str, Path | None], subjects: Sequence[str],
                   output_dir: str | Path, *, instance_prompt: str = "a photo of sks {}",
                   num_images: int = 2, num_prompts: int | None = None, num_inference_steps: int = 25,
                   guidance_scale: float = 3.0, seed: int = 0, num_loss_timesteps: int = 20,
                   evaluators_dir: str | Path | None = None, progress: bool = True,
                   num_prior_images: int = 4, unique_token: str = "sks") -> list[WorldScore]:
    """Score LoRAs on world subjects with every world metric.

    Args:
        methods: name -> LoRA folder, or ``{name: {subject: folder}}``-style folders as
            :func:`~dreambat.eval.config.build_methods` takes them (None: the bare backbone).
        subjects: world subject names.
        instance_prompt: the training prompt, ``{}`` standing for the class word (held-out loss).
        unique_token: the identifier in the generation prompts (``TOK`` for a pivotal-tuning LoRA:
            its new tokens are loaded and expanded there).
        num_images / num_prompts / num_inference_steps / guidance_scale / seed: DreamBench
            generation over the world prompts (resumable in ``output_dir``).
        num_prior_images: images of the class prompt ("a photo of a star") and of the subject
            prompt ("a photo of sks star") for PRES, DIV and class drift (0: those stay None).

    Returns:
        One :class:`WorldScore` per (method, subject), also written to
        ``output_dir/world_scores.json``.
    """
    import json
    from dataclasses import asdict

    from dreambat.eval.config import EncoderSettings, GenerationSettings, Method
    from dreambat.eval.config import DreamBenchSubject
    from dreambat.eval.runner import run_dreambench

    from .evaluators import EVALUATORS_DIR, world_evaluator_settings
    from .prompts import WORLD_PROMPTS_PATH

    output_dir = Path(output_dir)
    world = [subject_by_name(name) for name in subjects]
    evaluators_dir = Path(evaluators_dir or EVALUATORS_DIR)
    settings = world_evaluator_settings(evaluators_dir)
    classifier = AttributeClassifier.load(evaluators_dir / "classifier")
    config = DreamBenchConfig(
        pretrained_model_name_or_path=str(backbone),
        methods=[Method(name, None if lora is None else Path(lora)) for name, lora in methods.items()],
        subjects=[DreamBenchSubject(s.name, subject_heldout_dir(s), s.class_word) for s in world],
        output_dir=output_dir / "dreambench",
        generation=GenerationSettings(num_images=num_images, seed=seed, num_inference_steps=num_inference_steps,
                                      guidance_scale=guidance_scale, num_prompts=num_prompts,
                                      scheduler="ddim", batch_size=16, unique_token=unique_token),
        encoders=EncoderSettings(**settings),
        prompts_file=WORLD_PROMPTS_PATH,
        prior=PriorSettings(num_prior_images=num_prior_images),
    )
    bench = run_dreambench(config, progress=progress)
    dreambench = {(s.method, s.subject): s for s in bench.scores}
    attributes = {(a.method, a.subject): a for a in attribute_scores(config, classifier)}
    drift = class_subject_fidelity(config, classifier)
    loss = HeldoutLoss(backbone, num_timesteps=num_loss_timesteps)
    scores = []
    for method in config.methods:
        for subject in world:
            d, a = dreambench[(method.name, subject.name)], attributes[(method.name, subject.name)]
            scores.append(WorldScore(
                method=method.name, subject=subject.name,
                heldout_loss=loss(subject, instance_prompt.format(subject.class_word), method.lora_for(subject.name)),
                dino=d.dino, clip_i=d.clip_i, clip_t=d.clip_t, subject_fidelity=a.subject_fidelity,
                subject_shape=a.subject_shape, prompt_fidelity=a.prompt_fidelity, num_images=a.num_images,
                pres=d.pres, div=d.div, class_subject_fidelity=drift[(method.name, subject.name)]))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "world_scores.json").write_text(json.dumps([asdict(s) for s in scores], indent=2) + "\n")
    return scores


def mean_by_method(scores: Sequence[WorldScore]) -> dict[str, dict[str, float | None]]:
    """Per method, the mean of each metric over subjects (None where no subject has it)."""
    out: dict[str, dict[str, float | None]] = {}
    for method in dict.fromkeys(s.method for s in scores):
        rows = [s for s in scores if s.method == method]
        out[method] = {}
        for metric in WORLD_METRICS:
            values = [getattr(s, metric) for s in rows if getattr(s, metric) is not None]
            out[method][metric] = float(np.mean(values)) if values else None
    return out


def world_table(scores: Sequence[WorldScore]) -> str:
    """A Markdown table of :func:`mean_by_method` (↓: lower is better; the rest: higher)."""
    header = ("| method | held-out loss ↓ | DINO | CLIP-I | CLIP-T | subject fidelity | prompt fidelity | PRES ↓ "
              "| DIV | class drift ↓ |")
    lines = [header, "|" + "---|" * (len(WORLD_METRICS) + 1)]
    for method, row in mean_by_method(scores).items():
        cells = ["–" if row[m] is None else f"{row[m]:.4f}" if m == "heldout_loss" else f"{row[m]:.3f}"
                 for m in WORLD_METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
