"""--selection clip: candidates ranked by CLIP similarity to the subject photos (or, with
--clip_query text, to a prompt), through the same streaming run and through the BAT pipeline."""

import json

import pytest
import torch
import torch.nn.functional as F

from dreambat.albat import ManifestMismatchError
from dreambat.albat.manifest import read_manifest
from dreambat.bat.report import bat_model_card_section
from dreambat.bat.pipeline import run_bat
from dreambat.bat.config import BatSettings
from dreambat.data.shards import ShardReader
from dreambat.data.transforms import load_rgb
from dreambat.errors import ConfigError
from dreambat.eval.encoders import ClipEncoder
from dreambat.eval.tiny import write_tiny_evaluators
from dreambat.inputs import resolve_inputs
from dreambat.reuse import scores_fingerprint
from dreambat.scoring.config import ScoreSettings
from dreambat.scoring.run import run_scoring
from dreambat_world.evaluators import world_evaluator_settings
from tests.scoring.conftest import N_GOOD


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    found = write_tiny_evaluators(tmp_path_factory.mktemp("clip"))
    return {"clip_model": str(found.clip_model), "clip_pretrained": str(found.clip_pretrained)}


def _flags(world, subject_dir, out, clip, **extra):
    return dict(pretrained_model_name_or_path=str(world["backbone"]), instance_data_dir=str(subject_dir),
                instance_prompt="a photo of sks star", backbone_shards=[world["shard"]], output_dir=str(out),
                selection="clip", num_backbone_samples=3, **clip, **extra)


def test_clip_scores_are_cosines_to_the_subject_centroid_and_the_top_n_is_kept(world, subject_dir, tmp_path, clip):
    result = run_scoring(ScoreSettings.from_flags(**_flags(world, subject_dir, tmp_path / "out", clip)),
                         show_progress=False)
    records = read_manifest(result.manifest_path)
    assert [r.index for r in records] == list(range(N_GOOD)) and all(r.has_score for r in records)
    encoder = ClipEncoder.load(clip["clip_model"], clip["clip_pretrained"], device="cpu")
    photos = [load_rgb(p) for p in sorted(subject_dir.glob("*.jpg"))]
    centroid = F.normalize(F.normalize(encoder.embed_images(photos), dim=1).mean(0), dim=0)
    images = [s.image for s in ShardReader(world["shard"])]
    expected = (F.normalize(encoder.embed_images(images), dim=1) @ centroid).double()
    torch.testing.assert_close(torch.tensor([r.score for r in records], dtype=torch.float64), expected,
                               rtol=1e-5, atol=1e-6)
    top = {r.index for r in sorted(records, key=lambda r: -r.score)[:3]}
    assert {r.index for r in records if r.selected} == top
    report = json.loads(result.report_path.read_text())
    assert report["curvature"]["method"] == "clip" and report["reliability"] is None
    assert report["counts"]["selected"] == 3


def test_clip_needs_a_count(world, subject_dir, tmp_path, clip):
    flags = _flags(world, subject_dir, tmp_path, clip)
    del flags["num_backbone_samples"]
    with pytest.raises(ConfigError, match="keeps a count"):
        ScoreSettings.from_flags(**flags)
    with pytest.raises(ConfigError, match="keeps a count"):
        BatSettings.from_flags(**flags)


def test_clip_selection_through_the_bat_pipeline(world, subject_dir, tmp_path, clip):
    out = tmp_path / "out"
    result = run_bat(BatSettings.from_flags(**_flags(world, subject_dir, out, clip), max_train_steps=2,
                                            train_batch_size=2, report_to="none", checkpointing_steps=100))
    assert result.report["stages"] == {"surrogate": "skipped", "score": "ran", "select": "ran", "train": "ran"}
    assert sum(bool(r.selected) for r in read_manifest(out / "selection.jsonl")) == 3
    assert result.report["counts"]["training_samples"].get("backbone", 0) > 0
    assert "CLIP similarity to the subject photos" in (out / "README.md").read_text()


HEART = "a pink heart on an orange background"  # candidate 1 of the world fixture's shard, and only it


def test_text_query_scores_are_cosines_to_the_prompt_and_rank_the_matching_image_first(world, subject_dir, tmp_path):
    """The world's trained CLIP (the tiny one is random): the prompt's candidate comes first."""
    clip = {k: v for k, v in world_evaluator_settings().items() if k != "dino_model"}
    flags = _flags(world, subject_dir, tmp_path / "out", clip, clip_query="text", clip_query_prompt=HEART)
    result = run_scoring(ScoreSettings.from_flags(**flags), show_progress=False)
    records = read_manifest(result.manifest_path)
    encoder = ClipEncoder.load(clip["clip_model"], clip["clip_pretrained"], device="cpu")
    query = F.normalize(encoder.embed_texts([HEART])[0], dim=0)
    images = [s.image for s in ShardReader(world["shard"])]
    expected = (F.normalize(encoder.embed_images(images), dim=1) @ query).double()
    torch.testing.assert_close(torch.tensor([r.score for r in records], dtype=torch.float64), expected,
                               rtol=1e-5, atol=1e-6)
    best = max(records, key=lambda r: r.score)
    assert best.index == 1 and best.selected
    report = json.loads(result.report_path.read_text())
    assert report["curvature"]["query"] == "text" and report["curvature"]["query_prompt"] == HEART
    assert report["settings"]["selection"]["clip_query_prompt"] == HEART


def test_the_query_enters_the_scores_fingerprint(world, subject_dir, tmp_path, clip):
    def fingerprint(**extra):
        settings = ScoreSettings.from_flags(**_flags(world, subject_dir, tmp_path / "out", clip, **extra))
        return scores_fingerprint(settings, resolve_inputs(settings.inputs), None)

    image = fingerprint()
    dog, cat = (fingerprint(clip_query="text", clip_query_prompt=p) for p in ("a photo of a dog", "a photo of a cat"))
    assert len({json.dumps(fp, sort_keys=True) for fp in (image, dog, cat)}) == 3
    assert "clip_query" not in image and "subject_sha256" in image  # as recorded before text queries existed
    assert dog["clip_query_prompt"] == "a photo of a dog" and "subject_sha256" not in dog  # photos play no part
    run_scoring(ScoreSettings.from_flags(**_flags(world, subject_dir, tmp_path / "out", clip)), show_progress=False)
    text = ScoreSettings.from_flags(**_flags(world, subject_dir, tmp_path / "out", clip, clip_query="text",
                                             clip_query_prompt="a photo of a dog"))
    with pytest.raises(ManifestMismatchError, match="clip_query"):  # never the image query's scores
        run_scoring(text, show_progress=False)


def test_text_query_settings_are_checked_before_anything_loads(world, subject_dir, tmp_path, clip, capsys):
    flags = _flags(world, subject_dir, tmp_path, clip, clip_query="text")
    for settings in (ScoreSettings, BatSettings):
        with pytest.raises(ConfigError, match="pass --clip_query_prompt"):
            settings.from_flags(**flags)
        with pytest.raises(ConfigError, match="pass --clip_query_prompt"):
            settings.from_flags(**flags, clip_query_prompt="  ")
    with pytest.raises(ConfigError, match="only read with --clip_query text"):
        ScoreSettings.from_flags(**_flags(world, subject_dir, tmp_path, clip, clip_query_prompt="a photo of a dog"))
    with pytest.raises(ConfigError, match="--selection random does not use it"):
        ScoreSettings.from_flags(**flags | {"selection": "random"}, clip_query_prompt="a photo of a dog")
    from dreambat.cli import parse_score_config

    argv = ["--pretrained_model_name_or_path", str(world["backbone"]), "--instance_data_dir", str(subject_dir),
            "--instance_prompt", "a photo of sks star", "--backbone_shards", world["shard"], "--selection", "clip",
            "--num_backbone_samples", "3", "--clip_query", "text"]
    with pytest.raises(SystemExit):
        parse_score_config(argv)
    assert "--clip_query_prompt naming the class" in capsys.readouterr().err
    settings = parse_score_config(argv + ["--clip_query_prompt", "a photo of a dog"])
    assert settings.selection.clip_query_prompt == "a photo of a dog"


def test_the_model_card_says_which_query_ranked_the_candidates(world, subject_dir, tmp_path, clip):
    from dreambat.albat import SelectionResult

    kept = SelectionResult([0, 1, 2], threshold=0.1, requested=3, kept=3, n_positive=3)
    for extra, phrase in (({}, "CLIP similarity to the subject photos"),
                          ({"clip_query": "text", "clip_query_prompt": "a photo of a dog"},
                           "CLIP similarity to the prompt 'a photo of a dog'")):
        settings = BatSettings.from_flags(**_flags(world, subject_dir, tmp_path, clip, **extra))
        card = bat_model_card_section(settings, kept, pool=10, gamma=0.5)
        assert phrase in card and "kept 3 by CLIP similarity" in card
