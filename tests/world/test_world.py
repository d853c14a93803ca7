"""The world's data, subjects, prompts and committed backbone (fast, offline)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreambat.data.shards import ShardReader
from dreambat.errors import ConfigError
from dreambat_world.synthetic import COLORS, DEMO_SUBJECT, PATTERNS, SHAPES, VOCABULARY, SceneSpec
from dreambat_world import data as world_data
from dreambat_world.prompts import WORLD_PROMPTS_PATH, load_templates, world_prompts
from dreambat_world.subjects import (
    N_PHOTOS,
    WORLD_SUBJECTS,
    excludes_all_subjects,
    matches_any_subject,
    subject_by_name,
    subject_photos,
    subject_scenes,
)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------- subjects

def test_subjects_are_distinct_designs_named_by_their_shape():
    assert len(WORLD_SUBJECTS) >= 12
    assert DEMO_SUBJECT in WORLD_SUBJECTS
    keys = {(s.design.shape, s.design.color, s.design.pattern) for s in WORLD_SUBJECTS}
    assert len(keys) == len(WORLD_SUBJECTS)
    assert len({s.name for s in WORLD_SUBJECTS}) == len(WORLD_SUBJECTS)
    for s in WORLD_SUBJECTS:
        assert s.class_word == s.design.shape in SHAPES
        assert s.design.color in COLORS and s.design.pattern in PATTERNS
        assert subject_by_name(s.name) is s
    with pytest.raises(ConfigError):
        subject_by_name("no_such_subject")


def test_subject_photos_are_deterministic_and_splits_differ():
    subject = WORLD_SUBJECTS[3]
    train = subject_photos(subject, "train")
    heldout = subject_photos(subject, "heldout")
    assert len(train) == N_PHOTOS["train"] == 5 and len(heldout) == N_PHOTOS["heldout"] == 8
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in train + heldout)
    assert all(_same(a, b) for a, b in zip(train, subject_photos(subject, "train")))
    assert not any(_same(a, b) for a in train for b in heldout)
    for split in ("train", "heldout"):
        scenes = subject_scenes(subject, split)
        assert all(any(subject.matches(o) for o in sc.objects) for sc in scenes)
        backgrounds = [sc.background for sc in scenes]
        assert len(set(backgrounds[:5])) == 5  # varied backgrounds
        assert subject.design.color not in backgrounds
    with pytest.raises(ConfigError):
        subject_photos(subject, "test")  # type: ignore[arg-type]


def test_bundled_subject_photos_match_the_generator():
    for subject in WORLD_SUBJECTS[:3]:
        for split in ("train", "heldout"):
            folder = world_data.subject_photo_dir(subject.name, split)
            files = sorted(folder.glob("*.png"))
            assert len(files) == N_PHOTOS[split]
            for path, image in zip(files, subject_photos(subject, split)):
                assert _same(Image.open(path).convert("RGB"), image)


# ------------------------------------------------------------------------------- backbone pool

def test_pool_records_are_deterministic_random_access_and_exclude_every_subject():
    records = list(world_data.world_records(300, seed=5))
    again = list(world_data.world_records(3, seed=5, start=100))
    for a, b in zip(records[100:103], again):
        assert a["caption"] == b["caption"] and a["metadata"] == b["metadata"]
        assert _same(a["image"], b["image"])
    assert records[0]["caption"] != list(world_data.world_records(1, seed=6))[0]["caption"]
    objects = []
    for r in records:
        attributes = r["metadata"]["attributes"]
        assert excludes_all_subjects(attributes)
        assert all(w in VOCABULARY for w in r["caption"].split())
        objects.extend(SceneSpec.from_attributes(attributes).objects)
    assert not any(matches_any_subject(o) for o in objects)
    # Every attribute of every subject still appears on other objects.
    for s in WORLD_SUBJECTS:
        d = s.design
        assert any(o.shape == d.shape for o in objects)
        assert any(o.color == d.color for o in objects)
        assert any(o.pattern == d.pattern for o in objects)


def test_write_pool_shards_are_readable_with_captions_and_metadata(tmp_path):
    report = world_data.write_pool(tmp_path, world_data.PoolConfig(n=25, per_shard=10, seed=1))
    assert report.n_records == 25 and len(report.shards) == 3
    assert json.loads((tmp_path / "pool.json").read_text())["n_records"] == 25
    samples = list(ShardReader(sorted(str(p) for p in tmp_path.glob("shard-*.tar"))))
    assert [s.key for s in samples] == [f"{i:09d}" for i in range(25)]
    expected = list(world_data.world_records(25, seed=1))
    for sample, record in zip(samples, expected):
        assert sample.caption == record["caption"]
        assert sample.metadata["attributes"] == record["metadata"]["attributes"]
        assert _same(sample.image.convert("RGB"), record["image"])  # PNG: lossless
    with pytest.raises(ConfigError):
        world_data.PoolConfig(n=0)


def test_bundled_shard_is_a_readable_laion_style_shard():
    shard = world_data.ASSETS_DIR / world_data.BUNDLED_SHARD
    samples = list(ShardReader(str(shard)))
    assert len(samples) == 500
    for s in samples[:100]:
        assert s.image.size == (32, 32) and s.caption
        assert s.metadata["status"] == "success" and s.metadata["caption"] == s.caption
        assert excludes_all_subjects(s.metadata["attributes"])


# ------------------------------------------------------------------------------- prompts

def test_world_prompts_use_the_world_vocabulary_and_expected_attributes():
    templates = load_templates()
    assert len(templates) >= 25
    kinds = {t.kind for t in templates}
    assert {"recontextualization", "color_change", "pattern_change"} <= kinds
    for subject in WORLD_SUBJECTS:
        prompts = world_prompts(subject)
        assert len(prompts) >= 20
        for p in prompts:
            assert "sks" in p.prompt and "sks" not in p.clip_prompt
            assert all(w in VOCABULARY for w in p.clip_prompt.split())
            assert p.expected["shape"] == subject.design.shape
            assert p.expected.get("background") not in (subject.design.color, subject.design.pattern_color)
            if p.kind == "color_change":
                assert p.expected["color"] != subject.design.color
    assert len(world_prompts(DEMO_SUBJECT, keep_all=True)) == len(templates)


def test_world_prompt_file_loads_through_the_dreambench_loader(tmp_path):
    from dreambat.eval.prompts import DreamBenchPrompts

    loaded = DreamBenchPrompts.load(WORLD_PROMPTS_PATH)
    assert list(loaded.object) == [t.template for t in load_templates()]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompts": {"object": ["a {0} {1}"]}}))
    with pytest.raises(ConfigError):
        load_templates(bad)


# ------------------------------------------------------------------------------- backbone

def test_committed_backbone_loads_and_samples_32px():
    from diffusers import StableDiffusionPipeline

    from dreambat.backbone.load import load_backbone
    from dreambat_world.sampling import generate, load_pipeline

    folder = world_data.ASSETS_DIR / world_data.BACKBONE_DIR
    backbone = load_backbone(str(folder))
    assert backbone.native_resolution == 32
    assert backbone.unet.dtype == torch.float32
    assert backbone.vae.config.scaling_factor != 0.18215  # fitted to the world's latents
    ids = backbone.tokenizer("a striped hexagon on a noisy background").input_ids
    assert len(ids) == 2 + 7  # every world word is one token
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle on a white background", height=32, width=32, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    images = generate(load_pipeline(folder), ["a blue square"] * 2, [0, 0], steps=2)
    assert _same(images[0], images[1])  # the seed alone fixes an image


def test_committed_backbone_draws_what_held_out_captions_ask():
    """A regression guard on the committed weights, not the measurement of record (that is
    ``scripts/measure_world_backbone.py`` over 128+ images, in BENCHMARKS.md): 16 samples of
    held-out captions must mostly show the asked colour and background, and the VAE must
    reconstruct renders the classifier still reads."""
    from dreambat_world.classifiers import AttributeClassifier
    from dreambat_world.evaluators import CLASSIFIER_DIR
    from dreambat_world.fidelity import measure_fidelity

    result = measure_fidelity(world_data.ASSETS_DIR / world_data.BACKBONE_DIR,
                              AttributeClassifier.load(CLASSIFIER_DIR), n_captions=8, seeds=(0, 1), steps=12)
    assert result["n_images"] == 16
    assert result["generated"]["color"] >= 0.5 and result["generated"]["background"] >= 0.4, result["generated"]
    assert result["vae_round_trip"]["color"] >= 0.75 and result["vae_round_trip"]["shape"] >= 0.6, result
    assert set(result["generated_by_value"]["shape"]) <= set(SHAPES)
