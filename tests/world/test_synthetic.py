"""Tests of the procedural image world (dreambat_world.synthetic) and the committed assets."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambat_world import synthetic as S
from dreambat_world.synthetic import DEMO_SUBJECT, ObjectSpec, SceneSpec

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
SHARD = ASSETS / "backbone" / "shard-00000.tar"


def _load_make_assets():
    spec = importlib.util.spec_from_file_location("make_assets", REPO / "scripts" / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _jpeg_roundtrip(image: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return _decode(buf.getvalue())


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_records():
    a = list(S.backbone_records(20, seed=3))
    b = list(S.backbone_records(20, seed=3))
    assert [r["key"] for r in a] == [f"{i:09d}" for i in range(20)]
    assert [r["caption"] for r in a] == [r["caption"] for r in b]
    assert [r["metadata"] for r in a] == [r["metadata"] for r in b]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(a, b))


def test_different_seed_gives_different_records():
    a = list(S.backbone_records(20, seed=3))
    b = list(S.backbone_records(20, seed=4))
    assert [r["caption"] for r in a] != [r["caption"] for r in b]
    assert sum(x["image"].tobytes() != y["image"].tobytes() for x, y in zip(a, b)) >= 18


def test_records_are_random_access():
    whole = list(S.backbone_records(8, seed=5))
    tail = list(S.backbone_records(3, seed=5, start=5))
    assert [r["key"] for r in tail] == [r["key"] for r in whole[5:]]
    assert [r["caption"] for r in tail] == [r["caption"] for r in whole[5:]]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(tail, whole[5:]))


def test_subject_images_are_deterministic():
    a = S.subject_images(DEMO_SUBJECT, 3, np.random.default_rng(7), size=96)
    b = S.subject_images(DEMO_SUBJECT, 3, np.random.default_rng(7), size=96)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]


def test_render_without_rng_is_pure():
    scene = SceneSpec((ObjectSpec("star", "red", "striped", "white", 0.6, (0.5, 0.5), 10.0),),
                      "blue", "noise")
    assert S.render(scene).tobytes() == S.render(scene).tobytes()


# ------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("size", [32, 64, 96])
def test_render_size_and_mode(size):
    scene = S.random_scene(np.random.default_rng(size), max_objects=3)
    image = S.render(scene, size=size)
    assert image.mode == "RGB"
    assert image.size == (size, size)


def test_render_draws_shape_colour_and_pattern():
    obj = ObjectSpec("square", "red", "plain", "red", 0.8, (0.5, 0.5), 0.0)
    image = _pixels(S.render(SceneSpec((obj,), "blue")))
    assert tuple(image[32, 32]) == S.COLORS["red"]  # centre: the object
    assert tuple(image[1, 1]) == S.COLORS["blue"]  # corner: the background
    striped = ObjectSpec("square", "red", "striped", "yellow", 0.8, (0.5, 0.5), 0.0)
    pixels = _pixels(S.render(SceneSpec((striped,), "blue")))
    inside = pixels[16:48, 16:48].reshape(-1, 3)
    near = lambda rgb: (np.abs(inside - np.array(rgb)).sum(axis=1) < 30).mean()  # noqa: E731
    assert near(S.COLORS["red"]) > 0.25 and near(S.COLORS["yellow"]) > 0.25


@pytest.mark.parametrize("texture", sorted(S.BACKGROUND_TEXTURES))
def test_every_shape_and_pattern_renders(texture):
    for shape, pattern in itertools.product(S.SHAPES, S.PATTERNS):
        obj = ObjectSpec(shape, "green", pattern, "white", 0.7, (0.5, 0.5), 15.0)
        pixels = _pixels(S.render(SceneSpec((obj,), "black", texture)))
        green = (np.abs(pixels - np.array(S.COLORS["green"])).sum(axis=2) < 40).mean()
        assert green > 0.03, (shape, pattern)


def test_objects_stay_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(300):
        for obj in S.random_scene(rng, max_objects=3).objects:
            r = obj.size / 2
            assert r <= obj.position[0] <= 1 - r and r <= obj.position[1] <= 1 - r


def test_unknown_attribute_is_a_clear_error():
    with pytest.raises(ValueError, match="teal"):
        S.render(SceneSpec((ObjectSpec("star", "teal"),), "white"))


# ------------------------------------------------------------------------------ captions


def test_canonical_captions():
    heart = ObjectSpec("heart", "yellow", "dotted", "red", 0.35, (0.2, 0.2), 0.0)
    assert S.caption(SceneSpec((heart,), "gray")) == (
        "a small yellow dotted heart in the top left on a gray background")
    star = ObjectSpec("star", "red", "striped", "white", 0.5, (0.5, 0.5), 0.0)
    assert S.caption(SceneSpec((star,), "blue")) == "a red striped star on a blue background"
    circle = ObjectSpec("circle", "green", "plain", "green", 0.3, (0.25, 0.5))
    pair = SceneSpec((circle, circle.design.place(0.3, (0.75, 0.5))), "white")
    assert S.caption(pair) == "two green circles on a white background"
    mixed = SceneSpec((circle, star), "orange", "noise")
    assert S.caption(mixed) == (
        "a green circle and a red striped star on a noisy orange background")
    assert S.caption(SceneSpec((star,), "orange", "gradient")) == (
        "a red striped star on an orange gradient background")


def test_every_caption_word_is_in_the_vocabulary():
    vocabulary = set(S.VOCABULARY)
    assert S.VOCABULARY == sorted(vocabulary)
    rng = np.random.default_rng(11)
    used: set[str] = set()
    for _ in range(3000):
        scene = S.random_scene(rng, max_objects=int(rng.integers(1, 7)))
        for text in (S.caption(scene), S.caption(scene, rng)):
            words = text.split()
            assert text == text.lower() and text.strip() == text and "  " not in text
            assert set(words) <= vocabulary, set(words) - vocabulary
            used.update(words)
    for _ in range(50):
        used.update(S.caption(S.subject_in_scene(DEMO_SUBJECT, rng), rng).split())
    # The vocabulary is not padded with words no caption ever uses.
    assert vocabulary - used == set(), vocabulary - used


def test_caption_phrasing_varies_with_rng_but_keeps_attributes():
    scene = SceneSpec((ObjectSpec("hexagon", "pink", "checkered", "black", 0.5),), "brown")
    rng = np.random.default_rng(0)
    texts = {S.caption(scene, rng) for _ in range(60)}
    assert len(texts) > 3
    for text in texts:
        assert {"hexagon", "pink", "brown"} <= set(text.split())
        assert {"checkered", "checks"} & set(text.split())


# ------------------------------------------------------------------------------ scenes and subjects


def test_random_scene_respects_exclude_and_max_objects():
    rng = np.random.default_rng(2)
    counts = set()
    for _ in range(500):
        scene = S.random_scene(rng, exclude=lambda o: o.shape == "star", max_objects=3)
        counts.add(len(scene.objects))
        assert all(o.shape != "star" for o in scene.objects)
        assert all(o.color != scene.background for o in scene.objects)
    assert counts == {1, 2, 3}


def test_scene_attributes_round_trip():
    for record in S.backbone_records(30, seed=9):
        attrs = record["metadata"]["attributes"]
        json.dumps(record["metadata"])  # JSON-able
        scene = SceneSpec.from_attributes(attrs)
        assert scene.attributes() == attrs
        if scene.background_texture != "noise":  # noise comes from the record's rng
            assert S.render(scene).tobytes() == record["image"].tobytes()


def test_backbone_excludes_subject_design_but_has_its_attributes():
    design = DEMO_SUBJECT.design
    seen = {"shape": 0, "color": 0, "pattern": 0}
    for record in S.backbone_records(500, seed=0, exclude_subject=DEMO_SUBJECT):
        meta = record["metadata"]
        assert meta["key"] == record["key"] and meta["caption"] == record["caption"]
        assert meta["status"] == "success" and (meta["width"], meta["height"]) == (64, 64)
        for obj in meta["attributes"]["objects"]:
            assert (obj["shape"], obj["color"], obj["pattern"]) != (
                design.shape, design.color, design.pattern)
            seen["shape"] += obj["shape"] == design.shape
            seen["color"] += obj["color"] == design.color
            seen["pattern"] += obj["pattern"] == design.pattern
    assert min(seen.values()) >= 20, seen


def test_backbone_without_exclusion_can_show_any_design():
    designs = {
        (o["shape"], o["color"], o["pattern"])
        for r in S.backbone_records(300, seed=1)
        for o in r["metadata"]["attributes"]["objects"]
    }
    assert len(designs) > 150


def test_subject_images_differ_and_show_the_subject():
    images = S.subject_images(DEMO_SUBJECT, 5, np.random.default_rng(0), size=96)
    assert all(im.size == (96, 96) and im.mode == "RGB" for im in images)
    pixels = [_pixels(im) for im in images]
    for a, b in itertools.combinations(pixels, 2):
        assert np.abs(a - b).mean() > 5
    purple = np.array(S.COLORS[DEMO_SUBJECT.design.color])
    for p in pixels:
        assert (np.abs(p - purple).sum(axis=2) < 40).mean() > 0.05


def test_subject_in_scene_honours_requests():
    rng = np.random.default_rng(4)
    scene = S.subject_in_scene(DEMO_SUBJECT, rng, background="white", background_texture="gradient",
                               size=0.5, position=(0.4, 0.6), rotation=12.0, distractors=2)
    assert scene.background == "white" and scene.background_texture == "gradient"
    assert len(scene.objects) == 3
    subject = scene.objects[-1]
    assert DEMO_SUBJECT.matches(subject)
    assert (subject.size, subject.position, subject.rotation) == (0.5, (0.4, 0.6), 12.0)
    assert not any(DEMO_SUBJECT.matches(o) for o in scene.objects[:-1])
    assert DEMO_SUBJECT.class_word == DEMO_SUBJECT.design.shape == "star"
    assert DEMO_SUBJECT.prompt("sks") == "a sks star"


# ------------------------------------------------------------------------------ committed assets


def test_committed_assets_exist_and_are_small():
    subject = sorted((ASSETS / "subject").glob("*.jpg"))
    assert len(subject) == 5
    assert SHARD.is_file()
    assert (ASSETS / "README.md").is_file()
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    world = ASSETS / "world"
    assert sum(p.stat().st_size for p in files if world not in p.parents) < 2_000_000
    # The mini-world ships trained weights (backbone ~5 MB, evaluators ~1 MB) and a 500-image shard.
    assert sum(p.stat().st_size for p in files if world in p.parents) < 12_000_000
    with Image.open(subject[0]) as image:
        assert image.size == (128, 128)
    with tarfile.open(SHARD) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 for m in members)
    assert len(members) == 3 * 300


def test_committed_assets_match_regeneration(tmp_path):
    make_assets = _load_make_assets()
    make_assets.make_assets(tmp_path)
    committed, regenerated = _read_shard(SHARD), _read_shard(tmp_path / make_assets.BACKBONE_SHARD)
    assert list(committed) == list(regenerated)
    for key in committed:
        assert committed[key].keys() == {"jpg", "txt", "json"} == regenerated[key].keys()
        assert committed[key]["txt"] == regenerated[key]["txt"], key
        assert json.loads(committed[key]["json"]) == json.loads(regenerated[key]["json"]), key
    # JPEG bytes are reproducible with one libjpeg; pixels stay close with any.
    fresh = list(make_assets.backbone_samples(n=5))
    for record in fresh:
        ours = _pixels(_decode(committed[record["key"]]["jpg"]))
        assert ours.shape == (64, 64, 3)
        assert np.abs(ours - _pixels(_jpeg_roundtrip(record["image"]))).mean() < 1.0
        assert np.abs(ours - _pixels(record["image"])).mean() < 8.0
        assert committed[record["key"]]["txt"].decode() == record["caption"]
    for name, image in make_assets.subject_photos():
        with Image.open(ASSETS / "subject" / name) as stored:
            ours = _pixels(stored)
        assert np.abs(ours - _pixels(_jpeg_roundtrip(image))).mean() < 1.0
        assert (tmp_path / "subject" / name).read_bytes() == (ASSETS / "subject" / name).read_bytes() \
            or np.abs(ours - _pixels(Image.open(tmp_path / "subject" / name))).mean() < 1.0


def test_make_assets_is_byte_reproducible(tmp_path):
    make_assets = _load_make_assets()
    a = make_assets.make_assets(tmp_path / "a", seed=1, n_subject=2, n_backbone=10)
    b = make_assets.make_assets(tmp_path / "b", seed=1, n_subject=2, n_backbone=10)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
