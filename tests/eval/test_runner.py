"""The DreamBench runner end to end on the tiny backbone and tiny evaluators."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreambat.constants import LORA_WEIGHTS_NAME
from dreambat.errors import ConfigError, ModelNotFoundError, SubjectDataError
from dreambat.eval import runner
from dreambat.eval.config import (
    DreamBenchConfig, EncoderSettings, GenerationSettings, Method, PriorSettings, build_methods, parse_subject,
)
from dreambat.eval.generation import generate_images, load_pipeline
from dreambat.eval.prompts import DreamBenchPrompts
from dreambat.eval.tables import CSV_COLUMNS


def make_config(backbone, evaluators, subjects, out, loras=(), names=None, metrics=("dino", "clip_i", "clip_t"),
                prior=PriorSettings(num_prior_images=0), **generation):
    prompts = DreamBenchPrompts.load()
    settings = {"num_images": 2, "num_prompts": 2, "num_inference_steps": 1, "batch_size": 3, **generation}
    return DreamBenchConfig(
        pretrained_model_name_or_path=str(backbone),
        methods=build_methods(loras, names),
        subjects=[parse_subject(f"{folder}={folder.name}", prompts) for folder in subjects],
        output_dir=out,
        generation=GenerationSettings(**settings),
        encoders=EncoderSettings(str(evaluators.dino_model), str(evaluators.clip_model),
                                 str(evaluators.clip_pretrained), batch_size=8),
        metrics=metrics,
        device="cpu",
        prior=prior,
    )


def _snapshot(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*.png") if p.name != "scores.png"}


def test_end_to_end_layout_tables_and_resume(tiny_backbone, tiny_evaluators, two_subjects, lora_dirs, tmp_path):
    out = tmp_path / "bench"
    config = make_config(tiny_backbone, tiny_evaluators, two_subjects, out, [lora_dirs[0]], ["bat"])
    result = runner.run_dreambench(config, progress=False)

    expected = {f"{m}/{s}/{p:02d}_{1000 * p + i}.png" for m in ("base", "bat") for s in ("star", "dog")
                for p in range(2) for i in range(2)}
    assert {str(path) for path in _snapshot(out)} == expected
    assert result.generated == 16 and result.reused == 0
    assert Image.open(out / "bat/dog/01_1001.png").size == (32, 32)
    assert {path.name for path in result.paths.values()} == {"scores.csv", "scores.json", "scores.md", "scores.png"}

    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["method"], r["subject"]) for r in rows] == [
        ("base", "star"), ("base", "dog"), ("bat", "star"), ("bat", "dog"), ("real_images", "star"),
        ("real_images", "dog")]
    assert {r["prompt_set"] for r in rows if r["subject"] == "dog"} == {"live"}
    assert all(-1 <= float(r[m]) <= 1 for r in rows[:4] for m in ("dino", "clip_i", "clip_t"))
    assert rows[0]["num_generated"] == "4" and rows[1]["num_real"] == "3" and rows[-1]["clip_t"] == ""
    summary = json.loads((out / "scores.json").read_text())["summary"]
    assert summary["bat"]["dino"]["n"] == 2
    assert "| bat |" in (out / "scores.md").read_text()

    before = _snapshot(out)
    again = runner.run_dreambench(config, progress=False)
    assert again.generated == 0 and again.reused == 16 and _snapshot(out) == before
    assert [s.dino for s in again.scores] == pytest.approx([s.dino for s in result.scores], abs=1e-6)

    more = make_config(tiny_backbone, tiny_evaluators, two_subjects, out, list(lora_dirs), ["bat", "other"])
    assert runner.run_dreambench(more, progress=False).generated == 8  # only the new method's images

    changed = make_config(tiny_backbone, tiny_evaluators, two_subjects, out, [lora_dirs[0]], ["bat"],
                          num_inference_steps=2)
    with pytest.raises(ConfigError, match="other settings"):
        runner.run_dreambench(changed, progress=False)


def test_per_subject_lora_folders(tmp_path, lora_dirs):
    method = Method("bat", tmp_path)
    (tmp_path / "dog").symlink_to(lora_dirs[0], target_is_directory=True)
    assert method.lora_for("dog") == tmp_path / "dog"
    with pytest.raises(ModelNotFoundError, match=f"cat/{LORA_WEIGHTS_NAME}"):
        method.lora_for("cat")
    assert Method("single", lora_dirs[1]).lora_for("anything") == lora_dirs[1]


def test_images_depend_on_seed_not_batch(tiny_backbone):
    torch.manual_seed(123)  # the global RNG must not matter either
    pipeline = load_pipeline(tiny_backbone, device=torch.device("cpu"))
    settings = GenerationSettings(num_inference_steps=2)
    prompts, seeds = ["a sks star", "a sks dog in the snow", "a red sks star"], [0, 1000, 5]
    batched = generate_images(pipeline, prompts, seeds, settings)
    single = [generate_images(pipeline, [p], [s], settings)[0] for p, s in zip(prompts, seeds)]
    for a, b in zip(batched, single):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # float rounding only
    assert np.abs(np.asarray(batched[0], dtype=int) - np.asarray(batched[2], dtype=int)).max() > 10


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if the pipeline or an evaluator is ever loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")
    monkeypatch.setattr(runner, "load_pipeline", refuse)
    monkeypatch.setattr(runner, "_Scorer", refuse)


def test_bad_inputs_fail_before_generation(tiny_backbone, tiny_evaluators, two_subjects, lora_dirs, tmp_path,
                                           no_generation):
    out = tmp_path / "bench"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos")
    with pytest.raises(SubjectDataError, match="holds no image file"):
        runner.run_dreambench(make_config(tiny_backbone, tiny_evaluators, [two_subjects[0], empty], out),
                              progress=False)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        runner.run_dreambench(make_config(tiny_backbone, tiny_evaluators, two_subjects, out, [tmp_path / "nope"]),
                              progress=False)
    with pytest.raises(ModelNotFoundError, match=LORA_WEIGHTS_NAME):
        runner.run_dreambench(make_config(tiny_backbone, tiny_evaluators, two_subjects, out, [empty]),
                              progress=False)
    with pytest.raises(ConfigError, match="Unknown metric"):
        make_config(tiny_backbone, tiny_evaluators, two_subjects, out, metrics=("dino", "fid"))
    with pytest.raises(ConfigError, match="one name per LoRA"):
        make_config(tiny_backbone, tiny_evaluators, two_subjects, out, list(lora_dirs), ["only_one"])
    with pytest.raises(ConfigError, match="used twice"):
        make_config(tiny_backbone, tiny_evaluators, two_subjects, out, list(lora_dirs), ["same", "same"])
    with pytest.raises(ConfigError, match="used twice"):
        make_config(tiny_backbone, tiny_evaluators, two_subjects, out, [lora_dirs[0]], ["base"])
    with pytest.raises(ConfigError, match="Duplicate subject"):
        make_config(tiny_backbone, tiny_evaluators, [two_subjects[0], two_subjects[0]], out)
    assert not out.exists()


def _prior_files(out):
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("prior/*.png")}


def test_pres_and_div_images_are_planned_scored_reused_and_extended(tiny_backbone, tiny_evaluators, two_subjects,
                                                                    lora_dirs, tmp_path, dino):
    out, star = tmp_path / "bench", two_subjects[:1]

    def config(count, template="a photo of a {}", metrics=("clip_t",)):
        return make_config(tiny_backbone, tiny_evaluators, star, out, [lora_dirs[0]], ["bat"], metrics=metrics,
                           prior=PriorSettings(count, template), num_images=1, num_prompts=1)

    first = config(2)
    planned = runner.plan_prior(first)[("bat", "star")]
    assert [job.prompt for job in planned.class_jobs] == ["a photo of a star"] * 2
    assert [job.prompt for job in planned.subject_jobs] == ["a photo of sks star"] * 2
    assert [job.seed for job in planned.jobs] == [0, 1, 0, 1] and planned.class_jobs[0].lora == lora_dirs[0]

    result = runner.run_dreambench(first, progress=False)  # clip_t only: DINO is loaded for PRES / DIV
    assert set(_prior_files(out)) == {f"{m}/star/prior/{kind}_{seed}.png" for m in ("base", "bat")
                                      for kind in ("class", "subject") for seed in (0, 1)}
    assert result.generated == 2 * (1 + 4)  # per method: one DreamBench image, two class and two subject ones
    [base, bat, real] = result.scores
    photos = dino.embed_images(runner.load_photos(first.subjects[0], first.subjects[0].images()))
    for score in (base, bat):
        images = runner.plan_prior(first)[(score.method, "star")]
        class_embeddings = dino.embed_images([Image.open(job.path).convert("RGB") for job in images.class_jobs])
        subject_embeddings = dino.embed_images([Image.open(job.path).convert("RGB") for job in images.subject_jobs])
        by_hand = [float(torch.cosine_similarity(c, r, dim=0)) for c in class_embeddings for r in photos]
        assert score.pres == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-5)
        cosine = float(torch.cosine_similarity(subject_embeddings[0], subject_embeddings[1], dim=0))
        assert score.div == pytest.approx(1 - cosine, abs=1e-5) and score.div > 1e-4  # two seeds differ
        assert score.dino is None and score.clip_t is not None
    assert real.pres is None and real.div is None
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert float(rows[1]["pres"]) == pytest.approx(bat.pres) and rows[-1]["div"] == ""
    table = (out / "scores.md").read_text()
    assert "| method | CLIP-T | PRES ↓ | DIV |" in table and "'a photo of a {}'" in table
    assert json.loads((out / "scores.json").read_text())["summary"]["bat"]["div"]["n"] == 1

    before = _prior_files(out)
    again = runner.run_dreambench(first, progress=False)
    assert again.generated == 0 and again.reused == 10 and _prior_files(out) == before
    assert again.scores[1].pres == pytest.approx(bat.pres, abs=1e-6)

    more = runner.run_dreambench(config(3), progress=False)  # only seed 2 of each prompt is new
    assert more.generated == 4 and {k: v for k, v in _prior_files(out).items() if k in before} == before
    fewer = runner.run_dreambench(config(1), progress=False)  # the first image of each prompt
    assert fewer.generated == 0 and fewer.scores[1].div is None and fewer.scores[1].pres is not None

    with pytest.raises(ConfigError, match="other settings.*--class_prompt_template"):
        runner.run_dreambench(config(2, "a {} photo"), progress=False)
    off = runner.run_dreambench(config(0, "a {} photo"), progress=False)  # nothing of PRES / DIV to mix
    assert off.generated == 0 and all(s.pres is None and s.div is None for s in off.scores)
    assert "PRES" not in (out / "scores.md").read_text()
    with pytest.raises(ConfigError, match="--class_prompt_template"):  # the recorded template still holds
        runner.run_dreambench(config(2, "a {} photo"), progress=False)
