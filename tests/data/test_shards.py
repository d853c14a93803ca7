"""Tests of the img2dataset shard writer and the backbone shard reader."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from dreambat.data.shard_writer import ShardRecord, write_shards
from dreambat.data.shards import (
    MetadataFilter,
    ShardReader,
    check_shards_exist,
    expand_urls,
)
from dreambat.errors import ConfigError, ShardNotFoundError


def make_records(n: int, start: int = 0, width: int = 32, height: int = 24) -> list[ShardRecord]:
    """n distinct solid-colour records keyed 00000.. with captions 'caption i'."""
    return [
        ShardRecord(f"{i:05d}", Image.new("RGB", (width, height), (i * 7 % 256, 40, 90)), f"caption {i}")
        for i in range(start, start + n)
    ]


def keys(reader) -> list[str]:
    return [sample.key for sample in reader]


@pytest.fixture
def three_shards(tmp_path: Path) -> str:
    """Three shards of 4 samples each (keys 00000..00011); returns the brace pattern."""
    write_shards(make_records(12), tmp_path / "shard-{:05d}.tar", max_per_shard=4)
    return str(tmp_path / "shard-{00000..00002}.tar")


def test_good_shard_yields_everything_in_order(tmp_path):
    records = make_records(5, width=40, height=20)
    [path] = write_shards(list(reversed(records)), tmp_path / "one.tar")
    reader = ShardReader(str(path))
    samples = list(reader)
    assert [s.key for s in samples] == [r.key for r in records]
    assert [s.caption for s in samples] == [r.caption for r in records]
    for sample in samples:
        assert sample.url == str(path)
        assert sample.image.mode == "RGB" and sample.image.size == (40, 20)
        assert sample.metadata == {
            "key": sample.key, "status": "success", "width": 40, "height": 20, "caption": sample.caption,
        }
    assert reader.stats.yielded == 5 and reader.stats.skipped == 0
    assert reader.stats.summary() == "5 candidates read, 0 skipped"


def test_writer_sorts_members_and_is_atomic(tmp_path):
    [path] = write_shards(reversed(make_records(3)), tmp_path / "s.tar", image_format="png")
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names == [f"{i:05d}.{ext}" for i in range(3) for ext in ("json", "png", "txt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar"]
    with pytest.raises(ConfigError, match="index slot"):
        write_shards(make_records(3), tmp_path / "small.tar", max_per_shard=2)
    assert not (tmp_path / "small.tar").exists()


def test_brace_expansion_over_three_shards(three_shards, tmp_path):
    assert expand_urls(three_shards) == [str(tmp_path / f"shard-{i:05d}.tar") for i in range(3)]
    samples = list(ShardReader(three_shards))
    assert [s.key for s in samples] == [f"{i:05d}" for i in range(12)]
    assert [Path(s.url).name for s in samples[::4]] == [f"shard-{i:05d}.tar" for i in range(3)]


def test_list_of_urls_keeps_given_order(three_shards, tmp_path):
    urls = [str(tmp_path / "shard-00002.tar"), f"file://{tmp_path / 'shard-00000.tar'}"]
    reader = ShardReader(urls)
    assert keys(reader) == [f"{i:05d}" for i in (8, 9, 10, 11, 0, 1, 2, 3)]
    assert reader.stats.shards_read == 2


def test_pipe_url(tmp_path):
    [path] = write_shards(make_records(3), tmp_path / "p.tar")
    reader = ShardReader(f"pipe:cat {path}")
    samples = list(reader)
    assert [s.key for s in samples] == ["00000", "00001", "00002"]
    assert samples[0].url == f"pipe:cat {path}"


def test_corrupt_image_is_counted_and_others_yielded(tmp_path):
    records = make_records(4)
    records[1] = ShardRecord("00001", b"\xff\xd8\xff\xe0 definitely not a jpeg", "broken")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="JPEG")
    records[2] = ShardRecord("00002", good.getvalue()[: len(good.getvalue()) // 2], "cut jpeg")
    write_shards(records, tmp_path / "c.tar")
    reader = ShardReader(str(tmp_path / "c.tar"))
    assert keys(reader) == ["00000", "00003"]
    assert reader.stats.skipped_corrupt_image == 2
    assert reader.stats.summary() == "4 candidates read, 2 skipped (2 corrupt image)"


def test_missing_caption_missing_image_and_bad_json(tmp_path):
    records = make_records(6)
    records[1] = ShardRecord("00001", records[1].image, None)
    records[2] = ShardRecord("00002", records[2].image, "   ")
    records[4] = ShardRecord("00004", records[4].image, "caption 4", b"{not json")
    path = tmp_path / "m.tar"
    write_shards(records, path)
    # drop the image member of 00003 and the json member of 00005 (missing json is fine)
    with tarfile.open(path) as src, tarfile.open(tmp_path / "n.tar", "w") as dst:
        for member in src.getmembers():
            if member.name not in ("00003.jpg", "00005.json"):
                dst.addfile(member, src.extractfile(member))
    reader = ShardReader(str(tmp_path / "n.tar"))
    samples = list(reader)
    assert [s.key for s in samples] == ["00000", "00005"]
    assert samples[1].metadata == {}
    stats = reader.stats
    assert (stats.skipped_missing_caption, stats.skipped_missing_image, stats.skipped_bad_metadata) == (2, 1, 1)
    assert stats.as_dict()["skipped"] == 4 and stats.as_dict()["candidates_read"] == 6


@pytest.mark.parametrize("where", ["header_boundary", "mid_header", "mid_data"])
def test_truncated_tar_yields_complete_samples_before_the_cut(tmp_path, where):
    # tarfile ends silently at a cut header but raises on cut data: both must count.
    path = write_shards(make_records(8), tmp_path / "t.tar")[0]
    write_shards(make_records(2, start=8), tmp_path / "u.tar")
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name == "00003.json")
    cut = {
        "header_boundary": member.offset,
        "mid_header": member.offset + 100,
        "mid_data": member.offset_data + member.size // 2,
    }[where]
    path.write_bytes(path.read_bytes()[:cut])
    reader = ShardReader([str(path), str(tmp_path / "u.tar")])
    assert keys(reader) == ["00000", "00001", "00002", "00008", "00009"]
    assert reader.stats.truncated_shards == 1 and reader.stats.skipped == 0


def test_empty_shard_and_zero_byte_file(tmp_path):
    write_shards([], tmp_path / "empty.tar")
    (tmp_path / "zero.tar").write_bytes(b"")
    write_shards(make_records(2), tmp_path / "good.tar")
    reader = ShardReader([str(tmp_path / n) for n in ("empty.tar", "good.tar")])
    assert keys(reader) == ["00000", "00001"]
    assert reader.stats.truncated_shards == 0 and reader.stats.skipped == 0
    reader = ShardReader(str(tmp_path / "zero.tar"))
    assert keys(reader) == []
    assert reader.stats.truncated_shards == 1


def test_missing_shards_raise_before_iteration(three_shards, tmp_path, monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError("a shard was opened before the missing ones were reported")

    monkeypatch.setattr("dreambat.data.shards.gopen", no_open)
    pattern = str(tmp_path / "shard-{00000..00004}.tar")
    with pytest.raises(ShardNotFoundError) as info:
        ShardReader(pattern)
    message = str(info.value)
    assert "2 of 5" in message and "brace range" in message
    for i in (3, 4):
        assert str(tmp_path / f"shard-{i:05d}.tar") in message
    assert "shard-00002.tar" not in message
    with pytest.raises(ShardNotFoundError, match="file-missing.tar"):
        check_shards_exist([f"file://{tmp_path}/file-missing.tar", "pipe:cat nothing", "https://x/y.tar"])
    with pytest.raises(ShardNotFoundError, match="No backbone shards"):
        check_shards_exist([])


def test_max_candidates_counts_valid_samples_only(tmp_path):
    records = make_records(10)
    records[1] = ShardRecord("00001", records[1].image, None)
    write_shards(records, tmp_path / "s-{:05d}.tar", max_per_shard=3)
    reader = ShardReader(str(tmp_path / "s-{00000..00003}.tar"), max_candidates=4)
    assert keys(reader) == ["00000", "00002", "00003", "00004"]
    assert reader.stats.skipped_missing_caption == 1
    assert keys(ShardReader(str(tmp_path / "s-00000.tar"), max_candidates=0)) == []


def test_metadata_filters(tmp_path):
    records = [ShardRecord(f"{i:05d}", Image.new("RGB", (16 * (i + 1), 32)), f"c{i}") for i in range(5)]
    records[0] = ShardRecord("00000", records[0].image, "c0", {"width": 16, "nsfw": "UNLIKELY"})
    write_shards(records, tmp_path / "f.tar")
    url = str(tmp_path / "f.tar")
    reader = ShardReader(url, filters=["width>=48"])
    assert keys(reader) == ["00002", "00003", "00004"]
    assert reader.stats.skipped_filtered == 2
    assert keys(ShardReader(url, filters=[MetadataFilter.parse("width < 48"), "status==success"])) == ["00001"]
    assert keys(ShardReader(url, filters=["nsfw!=UNLIKELY"])) == []  # missing field fails
    assert keys(ShardReader(url, filters=["caption==c3"])) == ["00003"]
    assert MetadataFilter.parse("height<1024") == MetadataFilter("height", "<", 1024.0)
    for bad in ("width>>3", "width", ">=3", "status>=success"):
        with pytest.raises(ConfigError):
            MetadataFilter.parse(bad)


def test_two_way_sample_split_is_disjoint_and_complete(tmp_path):
    records = make_records(11)
    records[3] = ShardRecord("00003", b"garbage", "corrupt")
    records[6] = ShardRecord("00006", records[6].image, None)
    write_shards(records, tmp_path / "s-{:05d}.tar", max_per_shard=4)
    url = str(tmp_path / "s-{00000..00002}.tar")
    for cap in (None, 7):
        whole = ShardReader(url, max_candidates=cap)
        expected = keys(whole)
        parts = [ShardReader(url, max_candidates=cap, rank=r, world_size=2) for r in range(2)]
        got = [keys(part) for part in parts]
        assert not set(got[0]) & set(got[1])
        assert sorted(got[0] + got[1]) == expected
        for name in ("yielded", "skipped_corrupt_image", "skipped_missing_caption"):
            assert sum(getattr(p.stats, name) for p in parts) == getattr(whole.stats, name)
    assert len(expected) == 6  # candidates 0..6 minus the corrupt 00003


def test_shard_split(three_shards):
    got = [keys(ShardReader(three_shards, rank=r, world_size=2, split_by="shard")) for r in range(2)]
    assert got[0] == [f"{i:05d}" for i in (0, 1, 2, 3, 8, 9, 10, 11)]
    assert got[1] == [f"{i:05d}" for i in (4, 5, 6, 7)]
    with pytest.raises(ConfigError, match="max_candidates"):
        ShardReader(three_shards, rank=0, world_size=2, split_by="shard", max_candidates=5)
    with pytest.raises(ConfigError, match="one shard per rank"):
        ShardReader(three_shards, world_size=4, split_by="shard")


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "blue").save(buffer, format="JPEG", exif=exif.tobytes())
    write_shards([ShardRecord("00000", buffer.getvalue(), "rotated")], tmp_path / "e.tar")
    [sample] = list(ShardReader(str(tmp_path / "e.tar")))
    assert sample.image.size == (20, 40)
    assert json.loads(json.dumps(sample.metadata))["width"] == 40  # metadata is the stored size


def test_many_corrupt_samples_never_sleep(tmp_path, monkeypatch):
    records = [ShardRecord(f"{i:05d}", b"not an image %d" % i, "x") for i in range(200)]
    write_shards(records, tmp_path / "bad.tar")

    def no_sleep(seconds):
        raise AssertionError(f"reader slept {seconds}s")

    monkeypatch.setattr(time, "sleep", no_sleep)
    reader = ShardReader(str(tmp_path / "bad.tar"))
    assert keys(reader) == []
    assert reader.stats.skipped_corrupt_image == 200


def test_stats_reset_per_iteration(three_shards):
    reader = ShardReader(three_shards)
    first = list(reader)
    assert reader.stats.yielded == 12
    assert len(list(reader)) == len(first) and reader.stats.yielded == 12


def test_bad_reader_arguments(three_shards):
    with pytest.raises(ConfigError):
        ShardReader(three_shards, rank=2, world_size=2)
    with pytest.raises(ConfigError):
        ShardReader(three_shards, split_by="worker")


def test_failing_pipe_counts_unreadable_and_early_stop_closes_cleanly(tmp_path):
    [path] = write_shards(make_records(5), tmp_path / "p.tar")
    reader = ShardReader([f"pipe:cat {tmp_path}/nope.tar 2>/dev/null", f"pipe:cat {path}"])
    assert keys(reader) == [f"{i:05d}" for i in range(5)]
    assert reader.stats.unreadable_shards == 1 and reader.stats.truncated_shards == 0
    assert keys(ShardReader(f"pipe:cat {path}", max_candidates=2)) == ["00000", "00001"]


def test_candidate_index_is_global_across_ranks(tmp_path):
    from dreambat.data.shard_writer import write_shards
    from dreambat.data.shards import ShardReader

    records = [{"key": f"{i:04d}", "image": Image.new("RGB", (16, 16), (i, 0, 0)), "caption": f"c{i}"} for i in range(9)]
    write_shards(records, tmp_path / "s-{:05d}.tar", max_per_shard=4)
    url = str(tmp_path / "s-{00000..00002}.tar")
    whole = [(s.index, s.key) for s in ShardReader(url)]
    assert [i for i, _ in whole] == list(range(9))
    parts = sorted((s.index, s.key) for r in range(2) for s in ShardReader(url, rank=r, world_size=2))
    assert parts == whole


def test_sample_ratio_keeps_a_stable_hashed_subset(tmp_path):
    write_shards(make_records(400), tmp_path / "s-{:05d}.tar", max_per_shard=100)
    url = str(tmp_path / "s-{00000..00003}.tar")
    half = ShardReader(url, sample_ratio=0.5)
    kept = keys(half)
    assert 160 <= len(kept) <= 240  # binomial(400, 0.5): ±4 sd
    assert half.stats.not_sampled == 400 - len(kept) and half.stats.skipped == 0
    assert kept == keys(ShardReader(url, sample_ratio=0.5))  # the same subset every run
    quarter = set(keys(ShardReader(url, sample_ratio=0.25)))
    assert quarter <= set(kept)  # a smaller ratio is a subset: the pool grows monotonically
    parts = [keys(ShardReader(url, sample_ratio=0.5, rank=r, world_size=2)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == kept
    assert [s.index for s in ShardReader(url, sample_ratio=0.5)] == list(range(len(kept)))
    with pytest.raises(ConfigError, match="sample_ratio"):
        ShardReader(url, sample_ratio=0.0)


def test_truncation_sweep_yields_every_complete_sample_and_counts_the_cut_one(tmp_path):
    """Cut a shard at every 512-byte block and inside every member: nothing complete is lost."""
    path = write_shards(make_records(4), tmp_path / "t.tar")[0]
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = [(m.name.split(".")[0], m.name.split(".")[1], m.offset, m.offset_data + m.size)
                   for m in tar.getmembers()]
    cuts = sorted(set(range(0, len(data), 512)) | {m[2] + 100 for m in members} | {m[3] - 5 for m in members})
    for cut in cuts:
        path.write_bytes(data[:cut])
        reader = ShardReader(str(path))
        got = keys(reader)
        complete = [key for key in dict.fromkeys(m[0] for m in members)
                    if all(end <= cut for k, _, _, end in members if k == key)]
        # Every complete sample is yielded, in order; at most one more, which has its image and caption.
        assert got[: len(complete)] == complete, (cut, got, complete)
        extra = got[len(complete):]
        assert len(extra) <= 1
        for key in extra:
            ends = {ext: end for k, ext, _, end in members if k == key}
            assert ends["jpg"] <= cut and ends["txt"] <= cut
        started = {m[0] for m in members if m[2] + 512 <= cut}  # its header was read whole
        assert reader.stats.lost_to_truncation == len(started - set(got)), (cut, got, started)
        assert reader.stats.skipped == 0


def _write_members(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _jpeg(size=(32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


def test_caption_from_json_and_invalid_utf8_are_read_and_counted(tmp_path):
    _write_members(tmp_path / "s.tar", {
        "a.jpg": _jpeg(), "a.json": json.dumps({"caption": "  a red square  "}).encode(),  # no .txt
        "b.jpg": _jpeg(), "b.txt": b"caf\xe9 on a table",  # latin-1, not UTF-8
        "c.jpg": _jpeg(), "c.txt": b"plain", "c.json": json.dumps({"caption": "ignored: the .txt wins"}).encode(),
        "d.jpg": _jpeg(), "d.json": json.dumps({"caption": 7}).encode(),  # not text: no caption at all
    })
    reader = ShardReader(str(tmp_path / "s.tar"))
    captions = {s.key: s.caption for s in reader}
    assert captions == {"a": "a red square", "b": "caf\ufffd on a table", "c": "plain"}
    stats = reader.stats
    assert (stats.captions_from_json, stats.captions_repaired, stats.skipped_missing_caption) == (1, 1, 1)
    assert "1 caption(s) read from the json" in stats.summary() and "invalid UTF-8" in stats.summary()


@pytest.mark.parametrize("world_size", [1, 2])
def test_tiny_images_are_skipped_by_default_and_keep_their_index(tmp_path, world_size):
    records = make_records(6)
    records[2] = ShardRecord("00002", Image.new("RGB", (1, 1), (0, 0, 0)), "a tracking pixel")
    records[4] = ShardRecord("00004", Image.new("RGB", (40, 15), (0, 0, 0)), "a thin strip")
    write_shards(records, tmp_path / "s.tar")
    readers = [ShardReader(str(tmp_path / "s.tar"), rank=r, world_size=world_size) for r in range(world_size)]
    samples = sorted((s for reader in readers for s in reader), key=lambda s: s.index)
    assert [(s.index, s.key) for s in samples] == [(0, "00000"), (1, "00001"), (3, "00003"), (5, "00005")]
    assert sum(r.stats.skipped_too_small for r in readers) == 2
    assert sum(r.stats.skipped for r in readers) == 2
    if world_size == 1:
        assert "2 too small" in readers[0].stats.summary()
    everything = ShardReader(str(tmp_path / "s.tar"), min_image_size=0)
    assert [s.key for s in everything] == [r.key for r in records]
    assert [s.key for s in ShardReader(str(tmp_path / "s.tar"), min_image_size=24)] == ["00000", "00001", "00003", "00005"]
    with pytest.raises(ConfigError, match="min_image_size"):
        ShardReader(str(tmp_path / "s.tar"), min_image_size=-1)
