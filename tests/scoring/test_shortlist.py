"""--shortlist N: CLIP similarity ranks every candidate, ALBAT scores the top N only; both stages in
the manifest and the report, resumed and reused like a one-stage run, 1 process = 2 processes."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from dreambat import preemption
from dreambat.albat import ManifestMismatchError
from dreambat.albat.manifest import read_manifest
from dreambat.bat.config import BatSettings
from dreambat.bat.pipeline import run_bat
from dreambat.errors import ConfigError
from dreambat.eval.tiny import write_tiny_evaluators
from dreambat.scoring.config import ScoreSettings
from dreambat.scoring.run import run_scoring
from dreambat.scoring.shortlist import NOT_SHORTLISTED, SCORE_FIELD, SHORTLIST_DIR
from tests.conftest import REPO
from tests.runs import stop_points
from tests.scoring.conftest import N_GOOD

N = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    found = write_tiny_evaluators(tmp_path_factory.mktemp("clip"))
    return {"clip_model": str(found.clip_model), "clip_pretrained": str(found.clip_pretrained)}


def _flags(world, subject_dir, out, clip, **extra):
    return dict(pretrained_model_name_or_path=str(world["backbone"]), surrogate_lora=str(world["surrogate"]),
                instance_data_dir=str(subject_dir), instance_prompt="a photo of sks star",
                backbone_shards=[world["shard"]], output_dir=str(out), num_score_timesteps=2, score_batch_size=2,
                reference_draws=2, **clip) | extra


def _score(world, subject_dir, out, clip, **extra):
    return run_scoring(ScoreSettings.from_flags(**_flags(world, subject_dir, out, clip, **extra)), show_progress=False)


def _rows(path):
    return [(r.index, r.key, r.score, r.status, r.reason, r.selected, dict(r.source)) for r in read_manifest(path)]


def test_the_first_stage_keeps_clips_top_n_and_albat_scores_exactly_those(world, subject_dir, tmp_path, clip):
    full = {r.index: r for r in read_manifest(_score(world, subject_dir, tmp_path / "full", clip).manifest_path)}
    retrieval = read_manifest(_score(world, subject_dir, tmp_path / "clip", clip, selection="clip",
                                     num_backbone_samples=N, surrogate_lora=None).manifest_path)
    top = {r.index for r in retrieval if r.selected}
    cosine = {r.index: r.score for r in retrieval}
    result = _score(world, subject_dir, tmp_path / "two", clip, shortlist=N)
    records = read_manifest(result.manifest_path)
    assert [r.index for r in records] == list(range(N_GOOD))  # every candidate listed
    scored = {r.index: r for r in records if r.status == "scored"}
    assert set(scored) == top and len(top) == N
    # a candidate's ALBAT score does not depend on which others are scored beside it
    torch.testing.assert_close(torch.tensor([scored[i].score for i in sorted(top)], dtype=torch.float64),
                               torch.tensor([full[i].score for i in sorted(top)], dtype=torch.float64),
                               rtol=1e-5, atol=1e-9)
    for r in records:  # both stages in every record
        assert r.source[SCORE_FIELD] == pytest.approx(cosine[r.index], rel=1e-6)
        if r.index not in top:
            assert (r.status, r.reason, r.score, r.selected) == ("skipped", NOT_SHORTLISTED, None, False)
    assert {r.index for r in records if r.selected} == {i for i in top if full[i].score > 0}
    # the first stage is a run of its own, the same as --selection clip
    first = read_manifest(tmp_path / "two" / SHORTLIST_DIR / "selection.jsonl")
    assert [(r.index, r.selected) for r in first] == [(r.index, r.selected) for r in retrieval]
    report = json.loads(result.report_path.read_text())
    assert report["counts"]["skipped_not_shortlisted"] == N_GOOD - N
    assert report["shortlist"]["size"] == N and report["shortlist"]["kept"] == N
    assert report["shortlist"]["ranked"] == N_GOOD and report["shortlist"]["query"] == "the subject photos"
    assert report["score_statistics"]["scored"] == N


def test_a_rerun_reuses_both_stages_and_another_n_is_refused(world, subject_dir, tmp_path, clip, caplog):
    first = _score(world, subject_dir, tmp_path / "out", clip, shortlist=N)
    again = _score(world, subject_dir, tmp_path / "out", clip, shortlist=N)
    assert again.status == "reused" and _rows(again.manifest_path) == _rows(first.manifest_path)
    assert json.loads(again.report_path.read_text())["shortlist"] == first.report["shortlist"]
    with pytest.raises(ManifestMismatchError, match="shortlist"):
        _score(world, subject_dir, tmp_path / "out", clip, shortlist=N - 1)
    with pytest.raises(ManifestMismatchError, match="shortlist"):
        _score(world, subject_dir, tmp_path / "out", clip, shortlist=N, shortlist_query="text",
               shortlist_prompt="a photo of a star")


# Batches of 2: the first stage writes 5 batches (10 candidates), the ALBAT stage's first batch is the 6th write.
@pytest.mark.parametrize("write", [1, 6], ids=["in-the-first-stage", "in-the-second-stage"])
def test_stopped_in_either_stage_the_same_command_finishes_the_same_run(world, subject_dir, tmp_path, clip,
                                                                        monkeypatch, write):
    uninterrupted = _score(world, subject_dir, tmp_path / "once", clip, shortlist=N)
    with monkeypatch.context() as patch:
        from dreambat.albat import manifest

        stop_points._after_calls(manifest.ManifestWriter, "write", write, signal.SIGTERM, patch.setattr, before=False)
        with preemption.graceful_stop(), pytest.raises(preemption.Preempted):
            _score(world, subject_dir, tmp_path / "out", clip, shortlist=N)
    first_done = (tmp_path / "out" / SHORTLIST_DIR / "selection.jsonl").exists()
    assert first_done == (write == 6) and not (tmp_path / "out" / "selection.jsonl").exists()
    resumed = _score(world, subject_dir, tmp_path / "out", clip, shortlist=N)
    assert _rows(resumed.manifest_path) == _rows(uninterrupted.manifest_path)
    if first_done:  # the ALBAT stage resumes from its part manifest, the first stage is reused
        assert (resumed.status, resumed.report["shortlist"]["status"]) == ("resumed", "reused")
    else:  # the first stage resumes; the ALBAT stage had not begun
        assert (resumed.status, resumed.report["shortlist"]["status"]) == ("ran", "resumed")


def test_two_processes_give_the_one_process_manifests(world, subject_dir, tmp_path, clip):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process below
    try:
        single = _score(world, subject_dir, tmp_path / "one", clip, shortlist=N)
    finally:
        torch.set_num_threads(threads)
    flags = _flags(world, subject_dir, tmp_path / "two", clip, shortlist=N)
    args = [a for k, v in flags.items() for a in (f"--{k}", *(v if isinstance(v, list) else [str(v)]))]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29547", "-m", "dreambat", "score", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(tmp_path / "two" / "selection.jsonl") == _rows(single.manifest_path)
    for stage in (SHORTLIST_DIR + "/selection.jsonl",):
        assert _rows(tmp_path / "two" / stage) == _rows(tmp_path / "one" / stage)
    report = json.loads((tmp_path / "two" / "score_report.json").read_text())
    assert report["num_processes"] == 2 and report["counts"]["skipped_not_shortlisted"] == N_GOOD - N


def test_a_bat_run_trains_on_the_shortlisted_candidates_albat_kept(world, subject_dir, tmp_path, clip):
    flags = _flags(world, subject_dir, tmp_path / "bat", clip, shortlist=N, num_backbone_samples=2,
                   keep_nonpositive=True, max_train_steps=2, train_batch_size=2, report_to="none",
                   checkpointing_steps=100)
    result = run_bat(BatSettings.from_flags(**flags))
    records = read_manifest(tmp_path / "bat" / "selection.jsonl")
    kept = [r for r in records if r.selected]
    assert len(kept) == 2 and all(r.status == "scored" for r in kept)
    assert result.report["shortlist"]["kept"] == N
    assert result.report["counts"]["skipped_not_shortlisted"] == N_GOOD - N


@pytest.mark.parametrize("extra, message", [
    ({"shortlist": 0}, "N must be >= 1"),
    ({"shortlist": N, "shortlist_query": "text"}, "pass --shortlist_prompt"),
    ({"shortlist": N, "shortlist_prompt": "a photo of a star"}, "only read with --shortlist_query text"),
    ({"shortlist_query": "text", "shortlist_prompt": "a photo of a star"}, "add --shortlist N"),
    ({"shortlist": N, "selection": "random", "num_backbone_samples": 2, "surrogate_lora": None}, "reads no score"),
])
def test_shortlist_settings_are_checked_before_anything_loads(world, subject_dir, tmp_path, clip, extra, message):
    for settings in (ScoreSettings, BatSettings):
        flags = _flags(world, subject_dir, tmp_path, clip, **extra)
        if settings is BatSettings:
            flags.pop("surrogate_lora")
        with pytest.raises(ConfigError, match=message):
            settings.from_flags(**flags)
    assert not list(tmp_path.glob("*/selection*"))


# ------------------------------------------------------------------ precomputed embeddings


def _write_embeddings(folder, rows, parts=2):
    """``rows`` = [(key, vector)] as clip-retrieval writes them: img_emb/img_emb_<n>.npy beside
    metadata/metadata_<n>.parquet (key, url, caption), split into ``parts`` numbered parts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    size = -(-len(rows) // parts)
    for n in range(parts):
        chunk = rows[n * size:(n + 1) * size]
        np.save(folder / "img_emb" / f"img_emb_{n}.npy", np.stack([v for _, v in chunk]).astype("float16"))
        pq.write_table(pa.table({"key": [k for k, _ in chunk], "url": [f"http://x/{k}" for k, _ in chunk],
                                 "caption": ["-"] * len(chunk)}), folder / "metadata" / f"metadata_{n}.parquet")
    return folder


@pytest.fixture(scope="module")
def pool_embeddings(world, clip):
    """Every pool candidate's (key, CLIP image embedding) under the tests' encoder, in pool order."""
    from dreambat.data.shards import ShardReader
    from dreambat.eval.encoders import ClipEncoder

    encoder = ClipEncoder.load(clip["clip_model"], clip["clip_pretrained"], device="cpu")
    samples = list(ShardReader(world["shard"]))
    vectors = encoder.embed_images([s.image for s in samples]).float().numpy()
    return [(s.key, v) for s, v in zip(samples, vectors)]


def test_precomputed_embeddings_shortlist_the_same_candidates_as_computed_ones(
        world, subject_dir, tmp_path, clip, pool_embeddings):
    computed = read_manifest(_score(world, subject_dir, tmp_path / "computed", clip, shortlist=N).manifest_path)
    folder = _write_embeddings(tmp_path / "emb", pool_embeddings)
    result = _score(world, subject_dir, tmp_path / "read", clip, shortlist=N, shortlist_embeddings=str(folder))
    records = read_manifest(result.manifest_path)
    assert [(r.index, r.status, r.reason) for r in records] == [(r.index, r.status, r.reason) for r in computed]
    for got, want in zip(records, computed):
        if got.status == "scored":  # the same ALBAT score; the cosine up to the float16 storage
            assert got.score == pytest.approx(want.score, rel=1e-5, abs=1e-9)
            assert got.source[SCORE_FIELD] == pytest.approx(want.source[SCORE_FIELD], abs=2e-3)
        else:  # the cosines of candidates not kept are not held
            assert got.source[SCORE_FIELD] is None
    section = result.report["shortlist"]
    assert (section["ranked"], section["kept"], section["not_in_pool"]) == (N_GOOD, N, 0)
    assert not (tmp_path / "read" / SHORTLIST_DIR).exists()  # nothing embedded, nothing written for stage 1


def test_a_sample_without_an_embedding_and_an_embedding_without_a_sample_are_counted(
        world, subject_dir, tmp_path, clip, pool_embeddings, caplog):
    computed = read_manifest(_score(world, subject_dir, tmp_path / "computed", clip, shortlist=N).manifest_path)
    kept = [r.key for r in computed if r.status == "scored"]
    left = next(r for r in computed if r.reason == NOT_SHORTLISTED)
    rows = [(k, v) for k, v in pool_embeddings if k != left.key]  # one pool sample has no embedding
    best = dict(pool_embeddings)[kept[0]]
    rows.append(("elsewhere-000", best * 2))  # an embedding of no pool sample, as near as the best one
    folder = _write_embeddings(tmp_path / "emb", rows)
    with caplog.at_level("WARNING", logger="dreambat"):
        result = _score(world, subject_dir, tmp_path / "read", clip, shortlist=N, shortlist_embeddings=str(folder))
    records = {r.key: r for r in read_manifest(result.manifest_path)}
    assert len(records) == N_GOOD and records[left.key].reason == "no_embedding"
    assert result.report["counts"]["skipped_no_embedding"] == 1
    assert result.report["shortlist"]["not_in_pool"] == 1
    scored = [k for k, r in records.items() if r.status == "scored"]
    assert len(scored) == N - 1 and set(scored) < set(kept)  # the extra row took a slot
    assert "1 of the 4 shortlisted embeddings have no candidate in --backbone_shards" in caplog.text


@pytest.mark.parametrize("spoil, message", [
    ("no_folder", "is not a folder"),
    ("lonely_npy", "has no partner file"),
    ("key_column", "has no column 'key' (it has id, url, caption)"),
    ("rows", "must describe the same rows"),
])
def test_bad_embedding_folders_are_refused_before_any_model_loads(world, subject_dir, tmp_path, clip,
                                                                   pool_embeddings, spoil, message, monkeypatch):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dreambat.errors import DataError
    from dreambat.scoring import first_stage, run

    folder = _write_embeddings(tmp_path / "emb", pool_embeddings)
    if spoil == "no_folder":
        folder = tmp_path / "nowhere"
    elif spoil == "lonely_npy":
        np.save(folder / "img_emb" / "img_emb_7.npy", np.zeros((1, 4), "float16"))
    elif spoil == "key_column":
        table = pq.read_table(folder / "metadata" / "metadata_1.parquet").rename_columns(["id", "url", "caption"])
        pq.write_table(table, folder / "metadata" / "metadata_1.parquet")
    else:
        pq.write_table(pa.table({"key": ["a"], "url": ["u"], "caption": ["c"]}), folder / "metadata" / "metadata_0.parquet")
    monkeypatch.setattr(run, "load_backbone", lambda *a, **k: pytest.fail("model loaded before the check"))
    monkeypatch.setattr(first_stage, "load_clip", lambda *a, **k: pytest.fail("CLIP loaded before the check"))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _score(world, subject_dir, tmp_path / "out", clip, shortlist=N, shortlist_embeddings=str(folder))
    assert not (tmp_path / "out").exists()


def test_embeddings_of_another_model_name_the_flag_to_fix(world, subject_dir, tmp_path, clip, pool_embeddings):
    from dreambat.errors import DataError

    folder = _write_embeddings(tmp_path / "emb", [(k, v[:-1]) for k, v in pool_embeddings])
    with pytest.raises(DataError, match="pass the --clip_model and --clip_pretrained that computed them"):
        _score(world, subject_dir, tmp_path / "out", clip, shortlist=N, shortlist_embeddings=str(folder))
