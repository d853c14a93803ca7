"""The shard probe on img2dataset-shaped output: garbage refused, empty shards skipped, stats compared."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from dreambat.data import shard_probe
from dreambat.data.shard_probe import count_whole_samples, probe_shards, shared_shard_probe, stats_path
from dreambat.data.shard_writer import write_shards
from dreambat.data.shards import ShardReader
from dreambat.errors import DataError, ShardNotFoundError
from tests.conftest import REPO
from tests.data.img2dataset import write_img2dataset_shard
from tests.data.test_shards import keys, make_records

N_GOOD, N_TRUNCATED = 6, 8


@pytest.fixture
def laion(tmp_path) -> Path:
    """img2dataset output of three shards: 00000 whole, 00001 cut in half, 00002 empty (0 successes)."""
    folder = tmp_path / "laion"
    write_img2dataset_shard(folder, 0, make_records(N_GOOD), failures={"HTTP Error 404": 2})
    cut = write_img2dataset_shard(folder, 1, make_records(N_TRUNCATED, start=N_GOOD), failures={"timeout": 1})
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    write_img2dataset_shard(folder, 2, [], failures={"HTTP Error 404": 1, "Image decoding error": 1})
    return folder


def pattern(folder: Path) -> str:
    return str(folder / "{00000..00002}.tar")


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == shard_probe.__name__]


def test_empty_shard_is_skipped_with_one_warning_and_reported(laion, caplog):
    caplog.set_level(logging.INFO)
    probe = probe_shards(pattern(laion))
    good, cut, empty = (str(laion / f"{i:05d}.tar") for i in range(3))
    assert probe.usable == (good, cut) and list(probe.empty) == [empty]
    whole_in_cut = count_whole_samples(cut)
    assert 0 < whole_in_cut < N_TRUNCATED
    report = probe.report()
    assert report == {
        "given": 3, "used": 2, "empty_shards": [empty], "empty_reasons": probe.empty, "with_stats": 3,
        "expected_samples": N_GOOD + N_TRUNCATED, "found_samples": N_GOOD + whole_in_cut,
        "short_shards": [{"url": cut, "expected": N_TRUNCATED, "found": whole_in_cut}],
        "download_errors": {"HTTP Error 404": 3, "timeout": 1, "Image decoding error": 1}, "bad_stats": {},
    }
    assert "holds no samples" in probe.empty[empty] and "0 of 2 downloads succeeded" in probe.empty[empty]
    assert json.loads(json.dumps(report)) == report
    skipped, short = warnings(caplog)  # one line for the skipped shards, one for the short ones
    assert "Skipping 1 of 3" in skipped and empty in skipped and "--strict_shards" in skipped
    assert cut in short and f"{whole_in_cut} of {N_TRUNCATED} samples" in short and good not in short
    assert "\n" not in skipped + short


def test_usable_shards_give_every_sample_with_the_indices_of_reading_them_all(laion):
    everything = [(s.index, s.key) for s in ShardReader(pattern(laion))]
    usable = list(probe_shards(pattern(laion)).usable)
    assert [(s.index, s.key) for s in ShardReader(usable)] == everything
    assert len(everything) == N_GOOD + count_whole_samples(usable[1])
    parts = sorted((s.index, s.key) for r in range(2) for s in ShardReader(usable, rank=r, world_size=2))
    assert parts == everything


def test_no_usable_sample_under_the_filters_is_skipped(tmp_path):
    write_shards(make_records(3, width=16), tmp_path / "small.tar")
    write_shards(make_records(3, start=3, width=64), tmp_path / "large.tar")
    probe = probe_shards([str(tmp_path / "small.tar"), str(tmp_path / "large.tar")], ["width>=32"])
    assert probe.usable == (str(tmp_path / "large.tar"),)
    assert probe.empty == {str(tmp_path / "small.tar"): "no usable sample: 3 filtered (check --backbone_filter)"}
    assert probe.report()["expected_samples"] is None and probe.report()["with_stats"] == 0  # no stats files


def test_strict_shards_refuses_what_would_be_skipped(laion):
    with pytest.raises(DataError, match=r"(?s)--strict_shards: 1 of 3 .*00002\.tar: holds no samples") as info:
        probe_shards(pattern(laion), strict=True)
    assert "drop --strict_shards" in str(info.value)


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _not_a_tar(path: Path) -> None:
    path.write_text("<html>404 Not Found</html>\n" * 40)


def _cut_in_first_sample(path: Path) -> None:
    write_shards(make_records(2), path)
    path.write_bytes(path.read_bytes()[:700])


@pytest.mark.parametrize("spoil, message", [
    (_zero_bytes, "the file is empty"),
    (_not_a_tar, "not a tar archive"),
    (_cut_in_first_sample, "truncated before its first complete sample"),
])
def test_garbage_is_refused_beside_good_shards(tmp_path, spoil, message):
    write_shards(make_records(2), tmp_path / "good.tar")
    spoil(tmp_path / "bad.tar")
    with pytest.raises(DataError, match=f"(?s)1 of 2 backbone shard.*bad.tar: {message}"):
        probe_shards([str(tmp_path / "good.tar"), str(tmp_path / "bad.tar")])
    with pytest.raises(DataError, match=f"bad.tar: {message}"):  # --strict_shards refuses garbage too
        probe_shards([str(tmp_path / "good.tar"), str(tmp_path / "bad.tar")], strict=True)


def test_missing_shard_and_pool_of_empty_shards_are_refused(laion, tmp_path):
    with pytest.raises(ShardNotFoundError, match="00003.tar"):
        probe_shards(str(laion / "{00000..00003}.tar"))
    write_img2dataset_shard(tmp_path / "dead", 0, [], failures={"HTTP Error 403": 5})
    write_shards([{"key": "a", "image": b"junk", "caption": "x"}], tmp_path / "dead" / "00001.tar")
    with pytest.raises(DataError, match="None of the 2 backbone shard") as info:
        probe_shards(str(tmp_path / "dead" / "{00000..00001}.tar"))
    message = str(info.value)
    assert "00000.tar: holds no samples; img2dataset: 0 of 5 downloads succeeded; failed: HTTP Error 403 (5)" in message
    assert "00001.tar: no usable sample: 1 corrupt image" in message


def test_stats_path_follows_img2dataset_names(tmp_path):
    assert stats_path("laion/00002.tar") == "laion/00002_stats.json"
    assert stats_path(f"file://{tmp_path}/00007.tar") == f"{tmp_path}/00007_stats.json"
    assert stats_path("shards/part-3.tar.gz") == "shards/part-3_stats.json"
    assert stats_path("pipe:curl -s https://x/00000.tar") is None


def test_a_shard_shorter_than_its_stats_is_named_and_a_bad_stats_file_ignored(tmp_path, caplog):
    write_img2dataset_shard(tmp_path, 0, make_records(3), successes=5)  # a whole tar, but 2 samples gone
    write_img2dataset_shard(tmp_path, 1, make_records(2, start=3))
    (tmp_path / "00001_stats.json").write_text('{"count": 2}')
    probe = probe_shards(str(tmp_path / "{00000..00001}.tar"))
    assert probe.usable == probe.given and probe.short == [str(tmp_path / "00000.tar")]
    assert probe.report()["expected_samples"] == 5 and probe.report()["found_samples"] == 3
    assert probe.bad_stats == {str(tmp_path / "00001_stats.json"): "holds no integer 'successes' (is it "
                                                                     "img2dataset's stats file?)"}
    assert any("00001_stats.json" in line for line in warnings(caplog))


def test_whole_samples_are_counted_at_every_cut(tmp_path):
    """Cut a shard at every block and inside every member: the count is that of its whole samples."""
    path = write_shards(make_records(4), tmp_path / "t.tar")[0]
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = [(m.name.split(".")[0], m.offset, m.offset_data + m.size) for m in tar.getmembers()]
    cuts = set(range(512, len(data) + 1, 512)) | {m[1] + 100 for m in members} | {m[2] - 5 for m in members}
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        whole = [k for k in dict.fromkeys(m[0] for m in members) if all(end <= cut for key, _, end in members if key == k)]
        assert count_whole_samples(str(path)) == len(whole) == len(keys(ShardReader(str(path)))), cut


def test_probe_of_unchanged_files_is_computed_once(laion, caplog, monkeypatch):
    first = probe_shards(pattern(laion))
    caplog.clear()
    monkeypatch.setattr(shard_probe, "_shard_problem", lambda *a: pytest.fail("probed again"))
    assert probe_shards(pattern(laion)) is first and warnings(caplog) == []
    monkeypatch.undo()
    write_img2dataset_shard(laion, 2, make_records(1, start=50))  # img2dataset retried the shard
    again = probe_shards(pattern(laion))
    assert again.empty == {} and len(again.usable) == 3
    assert shared_shard_probe(pattern(laion)) is again  # one process: the probe itself


_TWO_RANKS = textwrap.dedent("""
    import sys
    from dreambat.data import shard_probe
    from dreambat.launch import process_state
    state = process_state()
    if not state.is_main_process:  # only the main process may look at the shards
        shard_probe.probe_shards = lambda *a, **k: sys.exit("rank 1 probed the shards itself")
    probe = shard_probe.shared_shard_probe(sys.argv[1])
    lines = [f"rank {state.process_index}: usable={list(probe.usable)} empty={list(probe.empty)}"]
    try:
        shard_probe.shared_shard_probe(sys.argv[1], strict=True)
    except shard_probe.DataError as error:
        lines.append(f"rank {state.process_index}: refused {str(error).splitlines()[0]}")
    with open(f"{sys.argv[2]}/rank{state.process_index}.txt", "w") as out:  # two ranks' stdout interleave
        out.write("\\n".join(lines) + "\\n")
    import torch.distributed as dist
    if dist.is_initialized():  # leave together: a rank that exits with the group alive can abort
        dist.barrier()
        dist.destroy_process_group()
""")


def test_every_process_gets_the_main_process_probe(laion, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    script = tmp_path / "ranks.py"
    script.write_text(_TWO_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29541", str(script), pattern(laion),
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for rank in (0, 1) for line in (tmp_path / f"rank{rank}.txt").read_text().splitlines())
    usable = [str(laion / "00000.tar"), str(laion / "00001.tar")]
    assert lines == [
        f"rank {r}: {what}" for r in (0, 1) for what in (
            "refused --strict_shards: 1 of 3 backbone shard(s) hold no usable sample:",
            f"usable={usable} empty={[str(laion / '00002.tar')]}",
        )
    ]
