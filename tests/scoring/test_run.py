"""End-to-end scoring runs on the tiny backbone: manifest, report, resume, bad input, 2 processes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from dreambat.scoring.config import ScoreSettings
from dreambat.albat.manifest import read_manifest
from dreambat.scoring.run import run_scoring
from dreambat.data.shard_writer import write_shards
from dreambat.data.shards import ShardReader
from dreambat.errors import ConfigError, DataError, ModelNotFoundError, ShardNotFoundError
from dreambat_world.synthetic import backbone_records
from tests.conftest import REPO
from tests.data.img2dataset import write_img2dataset_shard

from tests.scoring.conftest import N_GOOD


def _config(world, subject_dir, out, **overrides):
    settings = dict(
        pretrained_model_name_or_path=str(world["backbone"]), surrogate_lora=str(world["surrogate"]),
        instance_data_dir=str(subject_dir), instance_prompt="a photo of sks star",
        backbone_shards=[world["shard"]], output_dir=str(out), num_score_timesteps=2, score_batch_size=4,
        reference_draws=2,
    )
    return ScoreSettings.from_flags(**{**settings, **overrides})


def test_manifest_and_report(world, subject_dir, tmp_path):
    result = run_scoring(_config(world, subject_dir, tmp_path / "out"), show_progress=False)
    records = read_manifest(result.manifest_path)
    assert [r.index for r in records] == list(range(N_GOOD))
    assert all(r.status == "scored" and r.score is not None for r in records)
    assert all(r.selected == (r.score > 0) for r in records)
    report = json.loads(result.report_path.read_text())
    assert report["counts"]["skipped_corrupt_image"] == 1
    assert report["counts"]["skipped_missing_caption"] == 1
    assert report["counts"]["selected"] == sum(r.selected for r in records)
    assert report["curvature"]["n_ref"] == 5 * 2 * 2 * 2  # photos x K x reference draws x antithetic pair
    assert not list((tmp_path / "out").glob("selection.rank*"))


def test_interrupted_run_resumes_without_rescoring(world, subject_dir, tmp_path):
    config = _config(world, subject_dir, tmp_path / "out", curvature="datainf")
    first = read_manifest(run_scoring(config, show_progress=False).manifest_path)
    manifest = tmp_path / "out" / "selection.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:6]) + lines[6][:20])  # "crash" mid-line after 6 candidates
    result = run_scoring(config, show_progress=False)
    assert result.report["counts"]["resumed"] == 6
    assert result.report["counts"]["scored_this_run"] == N_GOOD - 6
    again = read_manifest(result.manifest_path)
    assert [(r.index, r.selected) for r in again] == [(r.index, r.selected) for r in first]
    for a, b in zip(first, again):
        assert a.score == pytest.approx(b.score, rel=1e-6)


def test_other_settings_refuse_to_resume(world, subject_dir, tmp_path):
    run_scoring(_config(world, subject_dir, tmp_path / "out"), show_progress=False)
    with pytest.raises(DataError, match="num_score_timesteps"):
        run_scoring(_config(world, subject_dir, tmp_path / "out", num_score_timesteps=3), show_progress=False)
    run_scoring(_config(world, subject_dir, tmp_path / "out", num_score_timesteps=3, overwrite_manifest=True),
                show_progress=False)


def test_random_and_top_n_rules(world, subject_dir, tmp_path):
    top = run_scoring(_config(world, subject_dir, tmp_path / "a", num_backbone_samples=3), show_progress=False)
    kept = [r for r in read_manifest(top.manifest_path) if r.selected]
    assert 0 < len(kept) <= 3 and all(r.score > 0 for r in kept)
    rnd = run_scoring(_config(world, subject_dir, tmp_path / "b", selection="random", num_backbone_samples=3),
                      show_progress=False)
    assert sum(r.selected for r in read_manifest(rnd.manifest_path)) == 3


def test_bad_inputs_fail_before_loading(world, subject_dir, tmp_path, monkeypatch):
    from dreambat.scoring import run

    monkeypatch.setattr(run, "load_backbone", lambda *a, **k: pytest.fail("model loaded before checks"))
    with pytest.raises(ShardNotFoundError, match="missing-00000.tar"):
        run_scoring(_config(world, subject_dir, tmp_path, backbone_shards=[str(tmp_path / "missing-00000.tar")]))
    with pytest.raises(ModelNotFoundError, match="surrogate"):
        run_scoring(_config(world, subject_dir, tmp_path, surrogate_lora=str(tmp_path / "nope")))


@pytest.mark.parametrize("overrides, message", [
    ({"num_score_timesteps": 0}, "num_score_timesteps"),
    ({"backbone_shards": []}, "--backbone_shards"),
    ({"num_backbone_samples": 3, "backbone_fraction": 0.5}, "at most one"),
    ({"damping": 0.0}, "--damping"),
])
def test_invalid_settings(world, subject_dir, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(world, subject_dir, tmp_path, **overrides)


@pytest.mark.parametrize("records", [
    [{"key": f"bad{i}", "image": b"junk", "caption": "x"} for i in range(3)],  # all corrupt
    [],  # an empty shard: no candidates at all
])
def test_no_scorable_candidates_are_found_before_any_model_loads(world, subject_dir, tmp_path, records, monkeypatch):
    """A pool whose only shard yields nothing is refused (an empty shard beside others is skipped)."""
    from dreambat.scoring import run

    monkeypatch.setattr(run, "load_backbone", lambda *a, **k: pytest.fail("model loaded before the shard probe"))
    write_shards(records, tmp_path / "bad.tar")
    with pytest.raises(DataError, match="(?s)None of the 1 backbone shard.*bad.tar: (no usable sample: 3 corrupt "
                                        "image|holds no samples)"):
        run_scoring(_config(world, subject_dir, tmp_path / "out", backbone_shards=[str(tmp_path / "bad.tar")]),
                    show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spoil, error, message", [
    (None, ShardNotFoundError, "not found"),
    (lambda path: path.write_bytes(b""), DataError, "the file is empty"),
    (lambda path: path.write_text("<html>404</html>"), DataError, "not a tar archive"),
])
def test_garbage_beside_a_good_shard_is_refused_before_any_model_loads(world, subject_dir, tmp_path, spoil, error,
                                                                        message, monkeypatch):
    from dreambat.scoring import run

    monkeypatch.setattr(run, "load_backbone", lambda *a, **k: pytest.fail("model loaded before the shard probe"))
    if spoil is not None:
        spoil(tmp_path / "bad.tar")
    settings = _config(world, subject_dir, tmp_path / "out", backbone_shards=[world["shard"], str(tmp_path / "bad.tar")])
    with pytest.raises(error, match=f"bad.tar: {message}" if spoil else "bad.tar"):
        run_scoring(settings, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_img2dataset_pool_skips_its_empty_shard_and_reports_it(world, subject_dir, tmp_path, caplog):
    """img2dataset output as it comes: 00000 whole, 00001 cut short, 00002 empty (every download failed)."""
    records = list(backbone_records(12, seed=3, size=32))
    folder = tmp_path / "laion"
    write_img2dataset_shard(folder, 0, records[:5], failures={"HTTP Error 404": 1})
    cut = write_img2dataset_shard(folder, 1, records[5:])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    write_img2dataset_shard(folder, 2, [], failures={"HTTP Error 404": 1, "Image decoding error": 1})
    pattern = str(folder / "{00000..00002}.tar")
    result = run_scoring(_config(world, subject_dir, tmp_path / "out", backbone_shards=[pattern]), show_progress=False)
    everything = [(s.index, s.key, s.url) for s in ShardReader(pattern)]
    assert 5 < len(everything) < 12
    assert [(r.index, r.key, r.source["url"]) for r in read_manifest(result.manifest_path)] == everything
    shards = json.loads(result.report_path.read_text())["shards"]
    assert shards["given"] == 3 and shards["used"] == 2
    assert shards["empty_shards"] == [str(folder / "00002.tar")]
    assert shards["expected_samples"] == 12 and shards["found_samples"] == len(everything)
    assert shards["short_shards"] == [{"url": str(cut), "expected": 7, "found": len(everything) - 5}]
    skips = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "00002.tar" in r.getMessage()]
    assert len(skips) == 1 and skips[0].startswith("Skipping 1 of 3 backbone shard(s)")


def test_two_processes_equal_one_bit_for_bit(world, subject_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process below; thread count changes float rounding
    try:
        single = read_manifest(run_scoring(_config(world, subject_dir, tmp_path / "one"), show_progress=False)
                               .manifest_path)
    finally:
        torch.set_num_threads(threads)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    args = ["--pretrained_model_name_or_path", str(world["backbone"]), "--surrogate_lora", str(world["surrogate"]),
            "--reference_draws", "2", "--instance_data_dir", str(subject_dir), "--instance_prompt", "a photo of sks star",
            "--backbone_shards", world["shard"], "--output_dir", str(tmp_path / "two"),
            "--num_score_timesteps", "2", "--score_batch_size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "dreambat", "score", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = read_manifest(tmp_path / "two" / "selection.jsonl")
    assert [(r.index, r.key, r.selected) for r in double] == [(r.index, r.key, r.selected) for r in single]
    # 10 candidates in batches of 4: one process scores 4 + 4 + 2, each of two 4 + 1; the padded
    # last batch keeps every forward the same shape, so the floats are the same.
    assert [(r.score, r.split_scores) for r in double] == [(r.score, r.split_scores) for r in single]
    report = json.loads((tmp_path / "two" / "score_report.json").read_text())
    assert report["num_processes"] == 2 and report["counts"]["skipped_corrupt_image"] == 1
    assert report["counts"]["shards_read"] == 1  # each process read the one shard; not summed


def test_two_processes_killed_after_a_batch_resume_from_their_part_files(world, subject_dir, tmp_path):
    """Each process of a two-process run is killed (SIGKILL) right after its first scored batch; the
    same command then resumes from the part manifests and gives the single-process scores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = read_manifest(run_scoring(_config(world, subject_dir, tmp_path / "one"), show_progress=False)
                               .manifest_path)
    finally:
        torch.set_num_threads(threads)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    out = tmp_path / "two"
    args = ["--pretrained_model_name_or_path", str(world["backbone"]), "--surrogate_lora", str(world["surrogate"]),
            "--reference_draws", "2", "--instance_data_dir", str(subject_dir), "--instance_prompt", "a photo of sks star",
            "--backbone_shards", world["shard"], "--output_dir", str(out), "--num_score_timesteps", "2",
            "--score_batch_size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [torchrun, "--nproc_per_node", "2", "--master_port", "29541", "-m"]
    killed = subprocess.run([*launch, "tests.runs.stop_points", "score", "SIGKILL", "score", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode != 0 and not (out / "selection.jsonl").exists()
    parts = sorted(out.glob("selection.rank*.jsonl"))
    partial = sum(len(read_manifest(p)) for p in parts)
    assert 4 <= partial < len(single)  # at least one process's first batch is on disk, not everything
    done = subprocess.run([*launch, "dreambat", "score", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no longer running" in done.stderr  # the killed run's lock was taken over
    resumed = read_manifest(out / "selection.jsonl")
    assert [(r.index, r.key, r.score, r.split_scores, r.selected) for r in resumed] == \
        [(r.index, r.key, r.score, r.split_scores, r.selected) for r in single]
    report = json.loads((out / "score_report.json").read_text())
    assert report["counts"]["resumed"] == partial and report["status"] == "resumed"
    assert not list(out.glob("selection.rank*.jsonl"))


ESTIMATOR = {"num_score_timesteps": 2, "reference_draws": 4, "common_noise": True, "antithetic": True,
             "normalize_timesteps": True}


def test_score_seed_reproduces_bit_for_bit_and_other_seeds_redraw(world, subject_dir, tmp_path):
    def scores(out, **overrides):
        result = run_scoring(_config(world, subject_dir, tmp_path / out, **ESTIMATOR, **overrides), show_progress=False)
        return [r.score for r in read_manifest(result.manifest_path)], result.report

    first, report = scores("a")
    assert first == scores("b")[0]  # same settings, same seed: the same floats
    other = scores("c", score_seed=1)[0]
    assert other != first
    fingerprint = json.loads((tmp_path / "a" / "selection.jsonl.meta.json").read_text())
    assert fingerprint["score_seed"] == 0 and fingerprint["reference_draws"] == 4
    # Every run reports its split-half reliability, with the rows it cost.
    reliability = report["reliability"]
    from scipy.stats import spearmanr

    split = np.array([r.split_scores for r in read_manifest(tmp_path / "a" / "selection.jsonl")])
    assert reliability["candidates"] == N_GOOD
    # two disjoint half-budget estimates (reference half A with candidate half a, B with b)
    assert reliability["half_run"] == pytest.approx(spearmanr(split[:, 0], split[:, 3]).statistic, abs=5e-5)  # 4 places
    assert reliability["candidate_rows"] == 4 and reliability["reference_rows_per_photo"] == 16
    assert report["curvature"]["n_ref"] == 5 * 16 and report["curvature"]["split_half"]
    assert all(r.split_scores is not None for r in read_manifest(tmp_path / "a" / "selection.jsonl"))


@pytest.mark.parametrize("output", ["mse", "square"])
def test_fast_path_equals_reference_path_for_every_output_function(world, subject_dir, tmp_path, output):
    runs = {path: read_manifest(run_scoring(_config(world, subject_dir, tmp_path / path, **ESTIMATOR,
                                                    score_output=output, scoring_path=path),
                                            show_progress=False).manifest_path)
            for path in ("fast", "reference")}
    for fast, slow in zip(runs["fast"], runs["reference"]):
        assert fast.score == pytest.approx(slow.score, rel=1e-4, abs=1e-9)
        assert fast.split_scores == pytest.approx(slow.split_scores, rel=1e-4, abs=1e-9)


def test_variance_reduced_scores_do_not_depend_on_batch_size(world, subject_dir, tmp_path):
    one = run_scoring(_config(world, subject_dir, tmp_path / "one", **ESTIMATOR, score_batch_size=1),
                      show_progress=False)
    many = run_scoring(_config(world, subject_dir, tmp_path / "many", **ESTIMATOR, score_batch_size=7),
                       show_progress=False)
    for a, b in zip(read_manifest(one.manifest_path), read_manifest(many.manifest_path)):
        assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-12)


def test_an_unreliable_ranking_warns_with_the_flag_to_raise(world, subject_dir, tmp_path, caplog, monkeypatch):
    import logging

    from dreambat.albat.reliability import Reliability
    from dreambat.scoring import reliability

    def low(split_scores):
        return Reliability(len(split_scores), 0.2, 0.33, 0.4, 0.7, 0.2, 0.1, "reference")

    monkeypatch.setattr(reliability, "split_half_reliability", low)
    with caplog.at_level(logging.WARNING, logger="dreambat"):
        result = run_scoring(_config(world, subject_dir, tmp_path / "out", num_score_timesteps=2), show_progress=False)
    assert result.report["reliability"]["full_run"] == 0.4
    assert "--reference_draws (now 2" in caplog.text and "Spearman 0.40" in caplog.text
