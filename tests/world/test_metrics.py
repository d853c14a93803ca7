"""World metrics: the held-out denoising loss and the attribute read-back of a DreamBench run."""

import dataclasses
from pathlib import Path

import pytest
from PIL import Image
import torch

from dreambat.backbone.load import load_backbone
from dreambat.errors import ModelNotFoundError
from dreambat.eval.config import DreamBenchConfig, EncoderSettings, GenerationSettings, Method, PriorSettings
from dreambat.eval.config import DreamBenchSubject
from dreambat.eval.runner import plan, plan_prior
from dreambat.eval.prompts import DreamBenchPrompts
from dreambat.lora import add_unet_lora, save_lora
from dreambat_world.classifiers import AttributeClassifier, AttributeNet, ClassifierConfig
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR
from dreambat_world.metrics import (
    WORLD_METRICS, HeldoutLoss, WorldScore, attribute_scores, class_subject_fidelity, shows_subject,
    subject_heldout_dir, world_table,
)
from dreambat_world.prompts import WORLD_PROMPTS_PATH, load_templates
from dreambat_world.subjects import WORLD_SUBJECTS, subject_photos

BACKBONE = ASSETS_DIR / BACKBONE_DIR
SUBJECT = WORLD_SUBJECTS[0]


@pytest.fixture(scope="module")
def heldout_loss() -> HeldoutLoss:
    return HeldoutLoss(BACKBONE, num_timesteps=4)


@pytest.fixture(scope="module")
def nonzero_lora(tmp_path_factory) -> Path:
    """A LoRA with random lora_B (a fresh LoRA has lora_B = 0 and changes nothing)."""
    torch.manual_seed(0)
    unet = load_backbone(str(BACKBONE)).unet
    add_unet_lora(unet, 4, init_lora_weights=False)
    folder = tmp_path_factory.mktemp("lora")
    save_lora(folder, unet)
    return folder


def test_heldout_loss_is_fixed_and_a_lora_changes_it_and_is_unloaded(heldout_loss, nonzero_lora):
    prompt = f"a photo of sks {SUBJECT.class_word}"
    base = heldout_loss(SUBJECT, prompt)
    assert base > 0 and base == heldout_loss(SUBJECT.name, prompt)
    adapted = heldout_loss(SUBJECT, prompt, nonzero_lora)
    assert abs(adapted - base) > 1e-4 * base
    assert heldout_loss(SUBJECT, prompt) == base  # the LoRA was unloaded
    # the photos come from the held-out split: the committed folder gives the same number
    files = sorted(subject_heldout_dir(SUBJECT).glob("*.png"))
    assert len(files) == len(subject_photos(SUBJECT, "heldout"))
    assert heldout_loss(SUBJECT, prompt, photos=files) == pytest.approx(base, rel=1e-4)


def test_heldout_loss_names_a_missing_lora(heldout_loss, tmp_path):
    with pytest.raises(ModelNotFoundError, match="No LoRA weights"):
        heldout_loss(SUBJECT, "a photo of sks star", tmp_path)


class _Constant(AttributeClassifier):
    """Predicts the same labels for every image, so the expected scores can be counted by hand."""

    def __init__(self, labels):
        super().__init__(AttributeNet(ClassifierConfig()))
        self.labels = labels

    def predict(self, images):
        return [dict(self.labels) for _ in images]


def test_attribute_scores_count_unchanged_subject_attributes_and_asked_changes(tmp_path):
    config = DreamBenchConfig(
        pretrained_model_name_or_path=str(BACKBONE), methods=[Method("base")],
        subjects=[DreamBenchSubject(SUBJECT.name, subject_heldout_dir(SUBJECT), SUBJECT.class_word)],
        output_dir=tmp_path, generation=GenerationSettings(num_images=1, num_prompts=None),
        encoders=EncoderSettings(), prompts_file=WORLD_PROMPTS_PATH)
    for item in plan(config, DreamBenchPrompts.load(WORLD_PROMPTS_PATH))[("base", SUBJECT.name)]:
        item.job.path.parent.mkdir(parents=True, exist_ok=True)
        subject_photos(SUBJECT, "heldout", n=1)[0].save(item.job.path)
    d = SUBJECT.design
    labels = {"shape": d.shape, "color": d.color, "pattern": d.pattern, "background": "blue"}
    [score] = attribute_scores(config, _Constant(labels))
    templates = load_templates(WORLD_PROMPTS_PATH)
    asked = [{k: v for k, v in t.changes.items() if k in ("color", "pattern", "background")} for t in templates]
    asked = [a for a in asked if a]
    # every image keeps the subject's unchanged attributes; a prompt is met only when it asked for
    # a blue background and nothing the constant prediction contradicts
    assert score.subject_fidelity == 1.0 and score.subject_shape == 1.0
    assert score.num_images == len(templates) and score.num_prompt_scored == len(asked)
    met = sum(all(labels[k] == v for k, v in a.items()) for a in asked)
    assert met >= 1 and score.prompt_fidelity == pytest.approx(met / len(asked))
    wrong = dict(labels, shape="circle" if d.shape != "circle" else "square")
    [score] = attribute_scores(config, _Constant(wrong))
    assert score.subject_fidelity == 0.0 and score.subject_shape == 0.0


def test_attribute_scores_read_half_and_half_colours_order_free(tmp_path):
    """A striped subject shows its two colours in equal halves: read with the colours swapped it is
    still the subject (the classifier's ``agreement`` rule), read without its colour it is not."""
    subject = next(s for s in WORLD_SUBJECTS if s.design.pattern == "striped")
    config = DreamBenchConfig(
        pretrained_model_name_or_path=str(BACKBONE), methods=[Method("base")],
        subjects=[DreamBenchSubject(subject.name, subject_heldout_dir(subject), subject.class_word)],
        output_dir=tmp_path, generation=GenerationSettings(num_images=1, num_prompts=2),
        encoders=EncoderSettings(), prompts_file=WORLD_PROMPTS_PATH)
    for item in plan(config, DreamBenchPrompts.load(WORLD_PROMPTS_PATH))[("base", subject.name)]:
        item.job.path.parent.mkdir(parents=True, exist_ok=True)
        subject_photos(subject, "heldout", n=1)[0].save(item.job.path)
    d = subject.design
    swapped = {"shape": d.shape, "color": d.pattern_color, "pattern": d.pattern, "pattern_color": d.color,
               "background": "blue"}
    [score] = attribute_scores(config, _Constant(swapped))
    assert score.subject_fidelity == 1.0
    other = next(c for c in ("red", "green", "blue") if c not in (d.color, d.pattern_color))
    [score] = attribute_scores(config, _Constant(dict(swapped, pattern_color=other)))
    assert score.subject_fidelity == 0.0


def test_world_table_means_over_subjects():
    rows = [WorldScore("bat", s, loss, 0.5, 0.5, 0.2, fid, 1.0, None, 4, pres=pres, div=0.1, class_subject_fidelity=drift)
            for s, loss, fid, pres, drift in (("a", 0.1, 0.5, 0.4, 0.0), ("b", 0.3, 1.0, 0.6, None))]
    table = world_table(rows)
    assert "| PRES ↓ | DIV | class drift ↓ |" in table.splitlines()[0]
    assert "| bat | 0.2000 | 0.500 | 0.500 | 0.200 | 0.750 | – | 0.500 | 0.100 | 0.000 |" in table
    # rows written before PRES / DIV existed (positional, no prior images) still build and show –
    assert world_table([WorldScore("old", "a", 0.1, 0.5, 0.5, 0.2, 0.5, 1.0, None, 4)]).rstrip().endswith("| – | – | – |")


def test_world_score_has_the_prior_metrics_last():
    assert WORLD_METRICS[-3:] == ("pres", "div", "class_subject_fidelity")
    assert WORLD_METRICS[:6] == ("heldout_loss", "dino", "clip_i", "clip_t", "subject_fidelity", "prompt_fidelity")
    assert {"pres", "div", "class_subject_fidelity"} <= {f.name for f in dataclasses.fields(WorldScore)}


class _Listed(AttributeClassifier):
    """Predicts the given labels in turn, one per image."""

    def __init__(self, predictions):
        super().__init__(AttributeNet(ClassifierConfig()))
        self.predictions = list(predictions)

    def predict(self, images):
        out, self.predictions = self.predictions[:len(images)], self.predictions[len(images):]
        return [dict(p) for p in out]


def test_class_subject_fidelity_reads_the_class_prompt_images_back(tmp_path):
    def config(count):
        return DreamBenchConfig(
            pretrained_model_name_or_path=str(BACKBONE), methods=[Method("base")],
            subjects=[DreamBenchSubject(SUBJECT.name, subject_heldout_dir(SUBJECT), SUBJECT.class_word)],
            output_dir=tmp_path, generation=GenerationSettings(num_images=1, num_prompts=1),
            encoders=EncoderSettings(), prompts_file=WORLD_PROMPTS_PATH, prior=PriorSettings(count))

    images = plan_prior(config(4))[("base", SUBJECT.name)]
    assert [job.prompt for job in images.class_jobs] == [f"a photo of a {SUBJECT.class_word}"] * 4
    for job in images.jobs:
        job.path.parent.mkdir(parents=True, exist_ok=True)
        subject_photos(SUBJECT, "heldout", n=1)[0].save(job.path)
    d = SUBJECT.design
    own = {"shape": d.shape, "color": d.color, "pattern": d.pattern, "background": "blue"}
    other_shape = dict(own, shape="circle" if d.shape != "circle" else "square")
    other_colour = dict(own, color=next(c for c in ("red", "green", "blue") if c != d.color))
    # only the four class-prompt images are read (the subject-prompt ones are DIV's), in order
    classifier = _Listed([own, other_shape, own, other_colour, own, own, own, own])
    assert class_subject_fidelity(config(4), classifier) == {("base", SUBJECT.name): pytest.approx(0.5)}
    assert len(classifier.predictions) == 4
    assert class_subject_fidelity(config(0), _Listed([])) == {("base", SUBJECT.name): None}


def test_shows_subject_reads_half_and_half_colours_order_free():
    subject = next(s for s in WORLD_SUBJECTS if s.design.pattern == "striped")
    d = subject.design
    swapped = {"shape": d.shape, "color": d.pattern_color, "pattern": d.pattern, "pattern_color": d.color}
    assert shows_subject([swapped, dict(swapped, pattern="plain")], subject) == 0.5


def test_attribute_scores_follow_each_images_own_labels(tmp_path):
    """Each image's labels depend on the image (its prompt index is written into its pixels): the
    first five show the subject and ignore their prompt, the size and position prompts' images show
    another object, the rest obey their prompt. Subject and prompt fidelity are then fractions
    counted here, image by image; labels read against the wrong images would count otherwise."""
    subject = WORLD_SUBJECTS[0]  # dotted: its colours are read in a fixed order
    d = subject.design
    assert d.pattern == "dotted"
    config = DreamBenchConfig(
        pretrained_model_name_or_path=str(BACKBONE), methods=[Method("base")],
        subjects=[DreamBenchSubject(subject.name, subject_heldout_dir(subject), subject.class_word)],
        output_dir=tmp_path, generation=GenerationSettings(num_images=1, num_prompts=None),
        encoders=EncoderSettings(), prompts_file=WORLD_PROMPTS_PATH)
    prompts = DreamBenchPrompts.load(WORLD_PROMPTS_PATH)
    templates = prompts.templates(False, None)
    changes = {t.template: t.changes for t in load_templates(WORLD_PROMPTS_PATH)}
    for item in plan(config, prompts)[("base", subject.name)]:
        index = int(item.job.path.name.split("_")[0])
        item.job.path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (index, 0, 0)).save(item.job.path)

    def labels(index):
        asked = {k: v for k, v in changes[templates[index]].items() if k in ("color", "pattern", "background")}
        subject_labels = {"shape": d.shape, "color": d.color, "pattern": d.pattern, "background": "white"}
        if index < 5:  # the subject, prompt ignored
            return subject_labels
        if index >= 20:  # another object
            return {"shape": "circle", "color": "green", "pattern": "plain", "background": "white"}
        return subject_labels | asked  # obeys its prompt

    class ByImage(AttributeClassifier):
        def __init__(self):
            super().__init__(AttributeNet(ClassifierConfig()))

        def predict(self, images):
            return [labels(image.getpixel((0, 0))[0]) for image in images]

    [score] = attribute_scores(config, ByImage())
    keep, met, scored = [], [], 0
    for index, template in enumerate(templates):
        got = labels(index)
        keep.append(all(got[k] == getattr(d, k) for k in ("shape", "color", "pattern") if k not in changes[template]))
        asked = {k: v for k, v in changes[template].items() if k in ("color", "pattern", "background")}
        if asked:
            scored += 1
            met.append(all(got[k] == v for k, v in asked.items()))
    assert len(templates) == 26 and sum(keep) == 20  # the 6 images of another object fail
    assert score.subject_fidelity == pytest.approx(20 / 26)
    assert score.subject_shape == pytest.approx(20 / 26)
    assert score.num_prompt_scored == scored == 20
    assert sum(met) == 16  # 15 obeyed, and "on a white background" among the ignored
    assert score.prompt_fidelity == pytest.approx(16 / 20)
