"""One run per folder: the lock refuses a second run before it writes, and takes over a dead run's."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from dreambat.cli import main
from dreambat.runlock import LOCK_NAME, RunLock, RunLockedError
from tests.conftest import REPO
from tests.eval.conftest import tiny_evaluators  # noqa: F401  (fixture)
from tests.scoring.conftest import world  # noqa: F401  (fixture)

HOLDER = """
import sys, time
from dreambat.runlock import RunLock
RunLock(sys.argv[1], what="scoring run").acquire()
print("held", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def held_by_another_process(folder):
    """``folder``'s lock held by a live process (a run in progress there) for the block; yields it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another live process holds; yields (folder, that process)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "selection.jsonl").write_text("finished work\n")
    with held_by_another_process(folder) as holder:
        yield folder, holder


def _listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_second_run_is_refused_naming_the_first_and_writes_nothing(held):
    folder, holder = held
    before = _listing(folder)
    with pytest.raises(RunLockedError) as error:
        RunLock(folder).acquire()
    message = str(error.value)
    assert f"pid {holder.pid} on host" in message and "scoring run" in message and "--output_dir" in message
    assert _listing(folder) == before


def test_a_dead_runs_lock_is_taken_over_with_a_message_and_removed_on_release(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / LOCK_NAME).write_text(json.dumps({"what": "training run", "host": "node7", "pid": int(dead.stdout),
                                                "started": "2026-12-01T10:00:00+00:00", "command": ["train.py"]}))
    with caplog.at_level(logging.WARNING, logger="dreambat"):
        lock = RunLock(folder).acquire()
    assert "no longer running" in caplog.text and "node7" in caplog.text and dead.stdout.strip() in caplog.text
    holder = json.loads((folder / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["command"] == sys.argv
    lock.release()
    assert not (folder / LOCK_NAME).exists() and folder.is_dir()


def test_the_lock_is_reentrant_within_a_process_and_removes_a_folder_it_created_in_vain(tmp_path):
    folder = tmp_path / "new" / "run"
    outer = RunLock(folder).acquire()
    inner = RunLock(folder).acquire()  # a BAT run's scoring stage inside its own locked run
    inner.release()
    assert (folder / LOCK_NAME).exists()
    outer.release()
    assert not folder.exists()  # nothing but the lock was ever written there


def test_a_killed_holder_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    with held_by_another_process(folder):
        with pytest.raises(RunLockedError):
            RunLock(folder).acquire()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process
        try:
            RunLock(folder).acquire().release()
            break
        except RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME}


def test_score_into_a_folder_a_run_is_working_in_is_refused_before_it_writes(world, subject_dir, tmp_path, capsys):
    """The reported case: a second `dreambat score` (another --score_seed) into a folder in use wrote
    its score_config.json over the first run's before it was refused."""
    out = tmp_path / "out"
    flags = ["score", "--pretrained_model_name_or_path", str(world["backbone"]), "--surrogate_lora",
             str(world["surrogate"]), "--instance_data_dir", str(subject_dir), "--instance_prompt",
             "a photo of sks star", "--backbone_shards", world["shard"], "--output_dir", str(out),
             "--num_score_timesteps", "2", "--score_batch_size", "4", "--reference_draws", "2"]
    assert main(flags) == 0
    before = _files(out)
    with held_by_another_process(out) as holder:
        assert main([*flags, "--score_seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "is working in" in err
    assert _files(out) == before


def test_train_and_eval_into_a_folder_in_use_are_refused_before_they_write(
        tiny_backbone, tiny_evaluators, subject_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "dreambat_config.json").write_text("{}")
    train = ["train", "--pretrained_model_name_or_path", str(tiny_backbone), "--instance_data_dir", str(subject_dir),
             "--instance_prompt", "a photo of sks star", "--output_dir", str(out), "--selection", "none",
             "--max_train_steps", "1"]
    evaluate = ["eval", "--pretrained_model_name_or_path", str(tiny_backbone), "--subject", f"{subject_dir}=star",
                "--num_prompts", "1", "--num_images", "1", "--num_inference_steps", "1", "--device", "cpu",
                "--dino_model", str(tiny_evaluators.dino_model), "--clip_model", str(tiny_evaluators.clip_model),
                "--clip_pretrained", str(tiny_evaluators.clip_pretrained), "--output_dir", str(out), "--no_progress"]
    before = _files(out)
    with held_by_another_process(out):
        for flags in (train, evaluate):
            assert main(flags) == 2
            assert "is working in" in capsys.readouterr().err
    assert _files(out) == before
