"""The world's committed evaluators load through ``dreambat.eval`` and tell the world's images apart."""

import torch
import torch.nn.functional as F
import pytest

from dreambat.errors import ConfigError, ModelNotFoundError
from dreambat.eval.encoders import ClipEncoder, DinoEncoder
from dreambat_world.synthetic import backbone_record
from dreambat_world.classifiers import (
    AttributeClassifier,
    AttributeNet,
    ClassifierConfig,
    images_to_tensor,
    main_object_labels,
)
from dreambat_world.evaluator_training import info_nce, retrieval_scores, single_object_scenes
from dreambat_world.evaluators import CLASSIFIER_DIR, world_evaluator_settings, world_evaluators
from dreambat_world.subjects import WORLD_SUBJECTS, subject_photos

TEST_SEED = 7_300  # neither the evaluators' training nor their held-out measurement seed


@pytest.fixture(scope="module")
def classifier() -> AttributeClassifier:
    return AttributeClassifier.load(CLASSIFIER_DIR)


def test_classifier_reads_shape_and_colour_of_fresh_scenes(classifier):
    images, labels = single_object_scenes(20, TEST_SEED)
    scores = classifier.agreement(images, labels)  # colour order-free on stripes and checks
    for head in ("shape", "color", "pattern_color", "background"):
        assert scores[head] >= 0.7, (head, scores)


def test_subject_fidelity_of_subject_photos(classifier):
    subject = WORLD_SUBJECTS[0]
    scores = classifier.subject_fidelity(subject_photos(subject, "train"), subject)
    assert set(scores) == {"shape", "color", "pattern", "all"}
    assert scores["color"] >= 0.6 and scores["shape"] >= 0.6


def test_agreement_counts_each_expected_head(classifier, monkeypatch):
    fixed = [{"shape": "star", "color": "red", "pattern": "plain", "background": "blue"},
             {"shape": "circle", "color": "red", "pattern": "plain", "background": "white"}]
    monkeypatch.setattr(classifier, "predict", lambda images: fixed)
    scores = classifier.prompt_fidelity([None, None], {"color": "red", "background": "blue"})
    assert scores == {"color": 1.0, "background": 0.5, "all": 0.5}
    with pytest.raises(ConfigError):
        classifier.agreement([None, None], {"size": "large"})


def test_two_colour_patterns_are_scored_order_free_with_a_pattern_color_head(monkeypatch):
    classifier = AttributeClassifier(AttributeNet(ClassifierConfig(channels=(4, 4, 4), hidden=8)))
    fixed = [{"shape": "star", "color": "green", "pattern": "striped", "pattern_color": "yellow"},
             {"shape": "star", "color": "green", "pattern": "dotted", "pattern_color": "yellow"},
             {"shape": "star", "color": "green", "pattern": "checkered", "pattern_color": "yellow"}]
    monkeypatch.setattr(classifier, "predict", lambda images: fixed)
    # stripes and checks: either colour read counts; dots: the object colour must be the colour read
    assert classifier.agreement([None] * 3, {"color": "yellow"})["color"] == pytest.approx(2 / 3)
    assert classifier.agreement([None] * 3, {"color": "green", "pattern_color": "yellow"}) == {
        "color": 1.0, "pattern_color": 1.0, "all": 1.0}
    assert classifier.agreement([None] * 3, {"color": "red"})["color"] == 0.0
    old = [{key: value for key, value in row.items() if key != "pattern_color"} for row in fixed]
    monkeypatch.setattr(classifier, "predict", lambda images: old)  # a classifier without the head
    assert classifier.agreement([None] * 3, {"color": "yellow"})["color"] == 0.0


def test_attribute_loss_lets_half_and_half_objects_name_their_two_colours_in_either_order():
    from dreambat_world.evaluator_training import IGNORE, attribute_loss

    sure = lambda index: F.one_hot(torch.tensor([index]), 4).float() * 30  # noqa: E731
    logits = {"color": sure(2), "pattern_color": sure(1)}  # reads colour 2 on colour 1
    swapped = {"color": torch.tensor([1]), "pattern_color": torch.tensor([2])}
    assert attribute_loss(logits, swapped, torch.tensor([True])) < 1e-6  # stripes: either order
    assert attribute_loss(logits, swapped, torch.tensor([False])) > 10  # dots: the order counts
    plain = {"color": torch.tensor([2]), "pattern_color": torch.tensor([IGNORE])}
    assert attribute_loss(logits, plain, torch.tensor([False])) < 1e-6  # no pattern colour to read


def test_classifier_trains_every_head_including_pattern_colour_of_patterned_objects_only():
    from dreambat_world.evaluator_training import TrainBudget, train_classifier

    config = ClassifierConfig(channels=(4, 4, 4), hidden=8)
    classifier, log = train_classifier(config, TrainBudget(steps=3, batch_size=8, log_every=1))
    assert "pattern_color" in classifier.config.heads and torch.isfinite(torch.tensor(log["final_loss"]))
    images, _ = single_object_scenes(2, TEST_SEED)
    assert set(classifier.predict(images)[0]) == set(config.heads)


def test_classifier_round_trips_and_validates(tmp_path):
    config = ClassifierConfig(channels=(4, 4, 4), hidden=8)
    torch.manual_seed(0)
    saved = AttributeClassifier(AttributeNet(config).eval()).save(tmp_path / "clf")
    loaded = AttributeClassifier.load(saved)
    images, _ = single_object_scenes(3, TEST_SEED)
    assert loaded.predict(images) == AttributeClassifier.load(saved).predict(images)
    assert loaded.config == config
    with pytest.raises(ConfigError):
        ClassifierConfig(image_size=30)
    with pytest.raises(ModelNotFoundError):
        AttributeClassifier.load(tmp_path / "missing")


def test_main_object_is_the_largest():
    attributes = {"background": "blue", "objects": [
        {"shape": "star", "color": "red", "pattern": "plain", "size": 0.6},
        {"shape": "circle", "color": "green", "pattern": "dotted", "size": 0.3}]}
    assert main_object_labels(attributes) == {"shape": "star", "color": "red", "pattern": "plain",
                                              "background": "blue"}
    attributes["objects"][1]["size"] = 0.9
    attributes["objects"][1]["pattern_color"] = "white"
    assert main_object_labels(attributes) == {"shape": "circle", "color": "green", "pattern": "dotted",
                                              "pattern_color": "white", "background": "blue"}


def test_clip_loads_through_eval_and_matches_captions():
    settings = world_evaluator_settings()
    encoder = ClipEncoder.load(settings["clip_model"], settings["clip_pretrained"], device="cpu")
    records = [backbone_record(i, TEST_SEED, 32) for i in range(16)]
    images = encoder.embed_images([r["image"] for r in records])
    texts = encoder.embed_texts([r["caption"] for r in records])
    assert images.shape == texts.shape == (16, 64)
    scores = retrieval_scores(images, texts)
    assert scores["match_cosine"] > scores["mismatch_cosine"] + 0.1
    assert scores["a_to_b_top5"] >= 0.5


def test_dino_loads_through_eval_and_groups_subjects():
    encoder = DinoEncoder.load(str(world_evaluators().dino_model), device="cpu")
    a, b = WORLD_SUBJECTS[1], WORLD_SUBJECTS[2]
    photos = subject_photos(a, "heldout", n=4) + subject_photos(b, "heldout", n=4)
    emb = F.normalize(encoder.embed_images(photos), dim=-1)
    assert emb.shape == (8, 64)
    sims = emb @ emb.T
    same = (sims[:4, :4].sum() - 4 + sims[4:, 4:].sum() - 4) / 24
    assert same > sims[:4, 4:].mean()


def test_world_evaluators_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError):
        world_evaluators(tmp_path)


def test_retrieval_and_info_nce_against_reference():
    a = torch.eye(6)
    b = torch.eye(6)[[0, 1, 2, 3, 5, 4]]
    scores = retrieval_scores(a, b)
    assert scores["a_to_b_top1"] == pytest.approx(4 / 6) and scores["a_to_b_top5"] == 1.0
    assert scores["match_cosine"] == pytest.approx(4 / 6)
    logits = a @ b.T / 0.5
    reference = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert info_nce(a, b, 0.5) == pytest.approx(float(reference))


def test_training_loop_keeps_to_its_step_budget_and_leaves_eval_mode():
    from dreambat_world.evaluator_training import TrainBudget, train_within_budget

    model = torch.nn.Linear(3, 1)
    seen = []

    def loss_at(step):
        seen.append(step)
        return model(torch.ones(2, 3)).pow(2).mean()

    log = train_within_budget(model, loss_at, TrainBudget(steps=4, batch_size=2, log_every=2), "toy")
    assert seen == [1, 2, 3, 4] and log["steps"] == 4 and log["params"] == 4
    assert not model.training and log["final_loss"] >= 0


def test_reading_augmentation_is_seeded_and_stays_in_range():
    from dreambat_world.evaluator_training import degrade_for_reading, jpeg_round_trip, soften

    images, _ = single_object_scenes(8, TEST_SEED)
    first = degrade_for_reading(images, 32, torch.Generator().manual_seed(3))
    again = degrade_for_reading(images, 32, torch.Generator().manual_seed(3))
    other = degrade_for_reading(images, 32, torch.Generator().manual_seed(4))
    assert first.shape == (8, 3, 32, 32) and torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= -1 and first.max() <= 1
    for changed in (jpeg_round_trip(images[0], 30), soften(images[0])):
        assert changed.size == images[0].size and changed.tobytes() != images[0].convert("RGB").tobytes()


def test_vae_round_trip_augmentation_is_seeded_and_only_touches_its_share(tiny_backbone):
    from dreambat_world.evaluator_training import VaeRoundTrip

    round_trip = VaeRoundTrip.from_backbone(tiny_backbone, fraction=0.5)
    images, _ = single_object_scenes(16, TEST_SEED)
    pixels = images_to_tensor(images, 32)
    out = round_trip(pixels, torch.Generator().manual_seed(1))
    again = round_trip(pixels, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and out.shape == pixels.shape and out.min() >= -1 and out.max() <= 1
    changed = (out != pixels).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < 16  # a share of the batch, the rest untouched
    assert torch.equal(out[~changed], pixels[~changed])
    with pytest.raises(ConfigError, match="fraction"):
        VaeRoundTrip(round_trip.vae, fraction=0.0)


def test_classifier_measurement_reports_degraded_reading(classifier):
    from dreambat_world.evaluator_training import measure_classifier

    scores = measure_classifier(classifier, n=24, seed=TEST_SEED)
    for key in ("jpeg75", "soft"):
        assert set(scores[key]) >= {"shape", "color", "background", "all"}
        assert 0.5 <= scores[key]["shape"] <= 1.0, (key, scores[key])


def test_vae_round_trip_of_the_committed_backbone_keeps_the_scene():
    import numpy as np
    from diffusers import AutoencoderKL

    from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR
    from dreambat_world.fidelity import vae_round_trip

    vae = AutoencoderKL.from_pretrained(ASSETS_DIR / BACKBONE_DIR, subfolder="vae", local_files_only=True).float()
    images, _ = single_object_scenes(4, TEST_SEED)
    decoded = vae_round_trip(vae, images, batch_size=3)
    assert [im.size for im in decoded] == [im.size for im in images]
    error = np.mean([np.abs(np.asarray(a, float) - np.asarray(b.convert("RGB"), float)).mean()
                     for a, b in zip(decoded, images)])
    assert error < 20, error  # mean absolute error in 0-255 levels; a random decoder is ~100


def test_readings_by_value_counts_right_and_wrong_readings():
    from dreambat_world.fidelity import readings_by_value

    want = [{"shape": "star"}, {"shape": "star"}, {"shape": "star"}, {"shape": "circle"}]
    got = [{"shape": "star"}, {"shape": "cross"}, {"shape": "cross"}, {"shape": "hexagon"}]
    table = readings_by_value(got, want, ["shape"])["shape"]
    assert table["star"] == {"n": 3, "right": 1, "read_as": {"cross": 2}}
    assert table["circle"] == {"n": 1, "right": 0, "read_as": {"hexagon": 1}}
