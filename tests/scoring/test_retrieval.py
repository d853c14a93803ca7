"""--selection clip: candidates ranked by CLIP similarity to the subject photos, through the same
streaming run and through the BAT pipeline."""

import json

import pytest
import torch
import torch.nn.functional as F

from dreambat.albat.manifest import read_manifest
from dreambat.bat.pipeline import run_bat
from dreambat.bat.config import BatSettings
from dreambat.data.shards import ShardReader
from dreambat.data.transforms import load_rgb
from dreambat.errors import ConfigError
from dreambat.eval.encoders import ClipEncoder
from dreambat.eval.tiny import write_tiny_evaluators
from dreambat.scoring.config import ScoreSettings
from dreambat.scoring.run import run_scoring
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
