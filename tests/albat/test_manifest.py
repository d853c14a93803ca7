"""selection.jsonl: round trip, crash-safe appends and resume, fingerprints, merging, atomic rewrite."""

import json
import math
import os

import pytest

from dreambat.albat import manifest as manifest_module
from dreambat.albat.manifest import (
    ManifestMismatchError,
    ManifestRecord,
    ManifestWriter,
    merge_manifests,
    meta_path,
    read_manifest,
    write_manifest,
)
from dreambat.constants import SELECTION_MANIFEST_NAME
from dreambat.errors import DataError

FP = {"surrogate_sha256": "abc123", "num_score_timesteps": 4, "curvature": "exact", "damping": 0.1,
      "shards": ["a-00000.tar", "a-00001.tar"]}


def _record(i, score=None):
    score = (i - 4.5) * 0.25 if score is None else score
    return ManifestRecord(index=i, key=f"{i:09d}", source={"url": f"a-{i % 2:05d}.tar", "caption": f"a caption № {i} \"quoted\""},
                          score=score)


def _records(n=10):
    return [_record(i) for i in range(n)]


@pytest.fixture
def path(tmp_path):
    return tmp_path / SELECTION_MANIFEST_NAME


def test_record_round_trip():
    records = [
        _record(3),
        ManifestRecord(7, "k", None, source={"url": "u.tar", "caption": ""}, status="skipped", reason="corrupt_image", selected=False),
        ManifestRecord(8, "k8", 1e-30, source={"url": "u.tar", "caption": "c"}, selected=True),
    ]
    for record in records:
        line = record.to_json()
        assert "\n" not in line
        assert ManifestRecord.from_json(line) == record
    assert json.loads(ManifestRecord(1, "k", math.nan).to_json())["score"] is None
    with pytest.raises(DataError):
        ManifestRecord(1, "k", 0.0, status="done")
    with pytest.raises(DataError):
        ManifestRecord.from_json('{"index": 1}')


def test_writer_round_trip(path):
    with ManifestWriter(path, fingerprint=FP) as writer:
        writer.write(_records()[:4])
        writer.write(_records()[4:])
        assert writer.done_indices == set(range(10))
    assert read_manifest(path) == _records()
    assert json.loads(meta_path(path).read_text()) == FP


def test_resume_after_crash_drops_partial_line(path):
    with ManifestWriter(path, fingerprint=FP) as writer:
        writer.write(_records())
    with open(path, "a") as handle:
        handle.write(_record(10).to_json()[:25])  # a crash mid-line
    assert read_manifest(path) == _records()  # reading tolerates it

    with ManifestWriter(path, fingerprint=dict(FP)) as writer:
        assert writer.done_indices == set(range(10))
        assert writer.done_keys == {f"{i:09d}" for i in range(10)}
        assert path.read_text().endswith("}\n")  # the partial line is gone from the file
        writer.write([_record(10), _record(11)])
    assert read_manifest(path) == _records(12)
    assert len(path.read_text().splitlines()) == 12


def test_resume_drops_unparsable_last_line(path):
    write_manifest(_records(3), path, fingerprint=FP)
    with open(path, "a") as handle:
        handle.write("{garbage\n")
    assert read_manifest(path) == _records(3)
    with ManifestWriter(path, fingerprint=FP) as writer:
        assert writer.done_indices == {0, 1, 2}
        writer.write([_record(3)])
    assert read_manifest(path) == _records(4)


def test_corrupt_middle_line_is_an_error(path):
    lines = [r.to_json() for r in _records(3)]
    path.write_text("\n".join([lines[0], "{garbage", lines[2]]) + "\n")
    with pytest.raises(DataError, match="line 2"):
        read_manifest(path)


def test_read_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="No selection manifest"):
        read_manifest(tmp_path / "nope.jsonl")


def test_fingerprint_mismatch_names_fields(path):
    with ManifestWriter(path, fingerprint=FP) as writer:
        writer.write(_records(2))
    other = {**FP, "num_score_timesteps": 8, "damping": 0.2}
    with pytest.raises(ManifestMismatchError, match="num_score_timesteps") as info:
        ManifestWriter(path, fingerprint=other)
    assert info.value.fields == ("damping", "num_score_timesteps")
    assert info.value.path == path and "--" not in str(info.value)  # the core names no command-line flag
    assert isinstance(info.value, DataError)
    assert read_manifest(path) == _records(2)  # the refused manifest is untouched
    with pytest.raises(ManifestMismatchError, match="seed"):
        ManifestWriter(path, fingerprint={**FP, "seed": 1})  # a new field is a difference too


def test_tuple_and_list_fingerprints_are_equal(path):
    with ManifestWriter(path, fingerprint=FP) as writer:
        writer.write(_records(1))
    with ManifestWriter(path, fingerprint={**FP, "shards": tuple(FP["shards"])}) as writer:
        assert writer.done_indices == {0}


def test_manifest_without_meta_is_refused(path):
    path.write_text("".join(r.to_json() + "\n" for r in _records(2)))
    with pytest.raises(ManifestMismatchError, match="has no settings file"):
        ManifestWriter(path, fingerprint=FP)


def test_merge_of_rank_parts_equals_single_run(tmp_path):
    single = tmp_path / "single.jsonl"
    with ManifestWriter(single, fingerprint=FP) as writer:
        writer.write(_records(11))
    parts = [tmp_path / f"selection.rank{r:03d}.jsonl" for r in range(2)]
    for rank, part in enumerate(parts):
        with ManifestWriter(part, fingerprint=FP) as writer:
            mine = [rec for rec in _records(11) if rec.index % 2 == rank]
            writer.write(mine[:3])
            writer.write(mine[3:])
    out = tmp_path / "selection.jsonl"
    merged = merge_manifests(parts, out, fingerprint=FP)
    assert merged == read_manifest(single) == read_manifest(out)
    assert json.loads(meta_path(out).read_text()) == FP


def test_merge_deduplicates_and_may_include_its_output(tmp_path):
    out = tmp_path / "selection.jsonl"
    write_manifest(_records(6), out, fingerprint=FP)
    part = tmp_path / "selection.rank000.jsonl"
    write_manifest(_records(10)[4:], part, fingerprint=FP)  # indices 4, 5 in both
    merged = merge_manifests([part, out], out, fingerprint=FP)
    assert merged == _records(10) == read_manifest(out)


def test_merge_duplicates_with_different_scores_fail(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_manifest([_record(0), _record(1)], a, fingerprint=FP)
    write_manifest([_record(1, score=9.0)], b, fingerprint=FP)
    with pytest.raises(DataError, match="Candidate 1 differs"):
        merge_manifests([a, b], tmp_path / "out.jsonl", fingerprint=FP)
    assert not (tmp_path / "out.jsonl").exists()


def test_merge_refuses_part_with_other_fingerprint(tmp_path):
    a = tmp_path / "a.jsonl"
    write_manifest(_records(2), a, fingerprint={**FP, "curvature": "datainf"})
    with pytest.raises(ManifestMismatchError, match="curvature"):
        merge_manifests([a], tmp_path / "out.jsonl", fingerprint=FP)


def test_atomic_rewrite_keeps_original_on_failure(path, monkeypatch):
    write_manifest(_records(5), path, fingerprint=FP)
    before, meta_before = path.read_bytes(), meta_path(path).read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(manifest_module.os, "replace", broken_replace)
    flagged = [ManifestRecord(**{**r.__dict__, "selected": True}) for r in _records(5)]
    with pytest.raises(OSError, match="disk full"):
        write_manifest(flagged, path, fingerprint={**FP, "damping": 0.5})
    assert path.read_bytes() == before and meta_path(path).read_bytes() == meta_before
    assert sorted(os.listdir(path.parent)) == sorted([path.name, meta_path(path).name])  # no temp file left
