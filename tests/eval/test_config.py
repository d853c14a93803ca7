"""Subjects, methods and settings: parsing and validation (no model involved)."""

import shutil

import pytest

from dreambat.errors import ConfigError, SubjectDataError
from dreambat.eval.config import (
    GenerationSettings, PriorSettings, build_methods, dreambench_subjects, parse_subject,
)
from dreambat.eval.prompts import DreamBenchPrompts
from tests.conftest import ASSETS

PROMPTS = DreamBenchPrompts.load()


def test_subject_specs(tmp_path):
    assert parse_subject(f"{tmp_path}/dog2=dog", PROMPTS).live
    subject = parse_subject(f"{tmp_path}/bear=stuffed animal", PROMPTS)
    assert (subject.name, subject.class_noun, subject.live) == ("bear", "stuffed animal", False)
    assert parse_subject(f"{tmp_path}/robo=robot:live", PROMPTS).live
    assert not parse_subject(f"{tmp_path}/toy=toy dog:object", PROMPTS).live
    for bad in ("no-class", f"{tmp_path}/x=", f"{tmp_path}/x=dog:alive"):
        with pytest.raises(ConfigError):
            parse_subject(bad, PROMPTS)


def test_dreambench_folder(tmp_path):
    for name in ("dog2", "can"):
        shutil.copytree(ASSETS / "subject", tmp_path / name)
    subjects = dreambench_subjects(tmp_path, PROMPTS)
    assert [(s.name, s.class_noun, s.live) for s in subjects] == [("can", "can", False), ("dog2", "dog", True)]
    assert [s.name for s in dreambench_subjects(tmp_path, PROMPTS, ["dog2"])] == ["dog2"]
    with pytest.raises(ConfigError, match="Unknown DreamBench subject"):
        dreambench_subjects(tmp_path, PROMPTS, ["dragon"])
    with pytest.raises(SubjectDataError):
        dreambench_subjects(tmp_path / "missing", PROMPTS)


def test_methods_and_settings(tmp_path):
    assert [m.name for m in build_methods([tmp_path / "run1", tmp_path / "run2"])] == ["base", "run1", "run2"]
    assert [m.name for m in build_methods([tmp_path / "x"], ["mine"], include_base=False)] == ["mine"]
    for names in (["a/b"], ["real_images"]):
        with pytest.raises(ConfigError):
            build_methods([tmp_path], names)
    with pytest.raises(ConfigError, match="Nothing to evaluate"):
        build_methods([], include_base=False)
    settings = GenerationSettings(seed=5)
    assert settings.seed_for(2, 3) == 2008
    assert "batch_size" not in settings.fingerprint()
    for bad in ({"num_images": 0}, {"scheduler": "lms"}, {"resolution": 30}, {"unique_token": " "}):
        with pytest.raises(ConfigError):
            GenerationSettings(**bad)


def test_prior_settings_refuse_a_negative_count_and_a_template_without_one_slot():
    assert PriorSettings().num_prior_images == 4 and PriorSettings().class_prompt_template == "a photo of a {}"
    assert not PriorSettings(num_prior_images=0).enabled and PriorSettings(num_prior_images=0).fingerprint() is None
    assert PriorSettings(class_prompt_template="{}").fingerprint()["class_prompt_template"] == "{}"
    with pytest.raises(ConfigError, match="--num_prior_images must be in"):
        PriorSettings(num_prior_images=-1)
    for bad in ("a photo of a dog", "a photo of a {0}", "a {} and a {}", "a {1} {}", "a { } {}", ""):
        with pytest.raises(ConfigError, match="--class_prompt_template"):
            PriorSettings(class_prompt_template=bad)
