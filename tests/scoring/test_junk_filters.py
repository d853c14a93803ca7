"""Web junk, end to end: the caption–image filter before scoring, scores ranked by direction, and the
loss and gradient norm every scored record keeps."""

import json

import numpy as np
import pytest
import torch.nn.functional as F

from dreambat.albat import read_manifest
from dreambat.bat.config import BatSettings
from dreambat.bat.pipeline import run_bat
from dreambat.data.shards import ShardReader
from dreambat.errors import ConfigError
from dreambat.eval.encoders import ClipEncoder
from dreambat.eval.tiny import write_tiny_evaluators
from dreambat.scoring.run import run_scoring
from tests.scoring.test_run import _config


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    found = write_tiny_evaluators(tmp_path_factory.mktemp("clip-filter"))
    return {"clip_model": str(found.clip_model), "clip_pretrained": str(found.clip_pretrained)}


def _cosines(world, clip):
    """Each candidate's image–caption cosine, computed here with the encoder alone."""
    encoder = ClipEncoder.load(clip["clip_model"], clip["clip_pretrained"], device="cpu")
    samples = list(ShardReader(world["shard"]))
    images = F.normalize(encoder.embed_images([s.image for s in samples]).float(), dim=1)
    texts = F.normalize(encoder.embed_texts([s.caption for s in samples]).float(), dim=1)
    return {s.key: float(c) for s, c in zip(samples, (images * texts).sum(dim=1))}


def test_candidates_below_min_clip_score_are_skipped_counted_and_never_scored(world, subject_dir, tmp_path, clip):
    cosines = _cosines(world, clip)
    threshold = float(np.median(list(cosines.values())))
    result = run_scoring(_config(world, subject_dir, tmp_path / "out", min_clip_score=threshold, **clip),
                         show_progress=False)
    records = {r.key: r for r in read_manifest(result.manifest_path)}
    assert set(records) == set(cosines)
    for key, cosine in cosines.items():
        record = records[key]
        assert record.source["clip_score"] == pytest.approx(cosine, abs=1e-5)
        if cosine < threshold:
            assert (record.status, record.reason, record.score, record.selected) == (
                "skipped", "caption_mismatch", None, False)
        else:
            assert record.has_score and record.grad_norm > 0 and record.loss > 0
    rejected = sum(c < threshold for c in cosines.values())
    report = json.loads(result.report_path.read_text())
    assert report["counts"]["skipped_caption_mismatch"] == rejected > 0
    assert report["counts"]["scored_this_run"] == len(cosines) - rejected
    # a rerun with another threshold is another pool: it is refused, not mixed in
    with pytest.raises(Exception, match="min_clip_score"):
        run_scoring(_config(world, subject_dir, tmp_path / "out", min_clip_score=-1.0, **clip), show_progress=False)


def test_the_filter_applies_to_random_selection_too(world, subject_dir, tmp_path, clip):
    cosines = _cosines(world, clip)
    threshold = float(np.median(list(cosines.values())))
    flags = _config(world, subject_dir, tmp_path, **clip).inputs
    settings = BatSettings.from_flags(
        pretrained_model_name_or_path=flags.pretrained_model_name_or_path, instance_data_dir=flags.instance_data_dir,
        instance_prompt=flags.instance_prompt, output_dir=str(tmp_path / "bat"), backbone_shards=[world["shard"]],
        selection="random", backbone_fraction=1.0, min_clip_score=threshold, max_train_steps=1,
        train_batch_size=2, report_to="none", checkpointing_steps=100, **clip)
    run_bat(settings)
    records = read_manifest(tmp_path / "bat" / "selection.jsonl")
    kept = {r.key for r in records if r.selected}
    assert kept == {k for k, c in cosines.items() if c >= threshold}
    assert all(r.reason == "caption_mismatch" for r in records if r.key not in kept)


def test_a_cosine_score_ranks_by_direction(world, subject_dir, tmp_path):
    plain = read_manifest(run_scoring(_config(world, subject_dir, tmp_path / "z", score_normalization="none"),
                                      show_progress=False).manifest_path)
    cosine = read_manifest(run_scoring(_config(world, subject_dir, tmp_path / "cos", score_normalization="candidate"),
                                       show_progress=False).manifest_path)
    assert [r.key for r in plain] == [r.key for r in cosine]
    ratio = np.array([c.score * c.grad_norm / p.score for p, c in zip(plain, cosine)])
    # cosine = Z / (‖h‖ ‖∇ℓ(x)‖): the same ‖h‖ for every candidate, the same gradient norms and losses
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert [r.grad_norm for r in plain] == pytest.approx([r.grad_norm for r in cosine], rel=1e-5)
    assert [r.loss for r in plain] == pytest.approx([r.loss for r in cosine], rel=1e-6)
    assert all(abs(r.score) <= 1 for r in cosine)


def test_bad_filter_values_are_refused_before_anything_loads(world, subject_dir, tmp_path):
    with pytest.raises(ConfigError, match="--min_clip_score is a cosine"):
        _config(world, subject_dir, tmp_path, min_clip_score=1.5)
    with pytest.raises(ConfigError, match="--min_image_size must be >= 0"):
        _config(world, subject_dir, tmp_path, min_image_size=-1)
    with pytest.raises(SystemExit):
        from dreambat.cli import parse_score_config
        parse_score_config(["--score_normalization", "unit"])
