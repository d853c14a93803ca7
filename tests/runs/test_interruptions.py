"""Kill or stop a tiny BAT run anywhere, rerun the same command: the outputs are an uninterrupted run's.

Stop points (:mod:`tests.runs.stop_points`): the surrogate's training, ALBAT's reference gradients,
the scoring stream, the final training, the final save. SIGTERM is sent in-process under the
command's signal handling (the run must stop by itself, saving what it did); SIGKILL in a
subprocess running the trainer's main (the run gets no say). Either way the same command then
finishes the run, and every output equals an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreambat import preemption
from dreambat.albat.manifest import read_manifest
from dreambat.bat.pipeline import run_bat
from dreambat.cli import parse_run_config
from dreambat.data.shard_writer import write_shards
from dreambat.runlock import LOCK_NAME
from dreambat_world.synthetic import backbone_records
from tests.conftest import REPO
from tests.runs import stop_points

PROMPT = "a photo of sks star"


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("stop-shards") / "shard-00000.tar"
    write_shards(list(backbone_records(12, seed=3, size=32)), path)
    return str(path)


def _flags(backbone, out, shard) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(backbone), "--instance_data_dir", str(REPO / "assets" / "subject"),
        "--instance_prompt", PROMPT, "--output_dir", str(out), "--seed", "0", "--train_batch_size", "2",
        "--max_train_steps", "4", "--learning_rate", "1e-3", "--checkpointing_steps", "2",
        "--backbone_shards", shard, "--surrogate_steps", str(stop_points.SURROGATE_STEPS),
        "--num_score_timesteps", "2", "--score_batch_size", "4", "--reference_draws", "2",
        "--augmentation_ratio", "0.5", "--validation_prompt", PROMPT, "--num_validation_images", "1",
        "--num_inference_steps", "2", "--resume_from_checkpoint", "latest",
    ]


def _outputs(out) -> dict:
    report = json.loads((out / "bat_report.json").read_text())
    return {
        "surrogate": load_file(out / "surrogate" / "pytorch_lora_weights.safetensors"),
        "lora": load_file(out / "pytorch_lora_weights.safetensors"),
        "manifest": [(r.index, r.key, r.score, r.selected) for r in read_manifest(out / "selection.jsonl")],
        "grid": np.asarray(Image.open(out / "validation_grid.png")),
        "samples": report["counts"]["training_samples"],
        "selected": report["counts"]["selected"],
    }


def _assert_same(got: dict, want: dict) -> None:
    for name in ("surrogate", "lora"):
        assert got[name].keys() == want[name].keys()
        assert all(torch.equal(got[name][k], want[name][k]) for k in want[name]), f"{name} weights differ"
    assert got["manifest"] == want["manifest"]
    assert np.array_equal(got["grid"], want["grid"])
    assert (got["samples"], got["selected"]) == (want["samples"], want["selected"])


# What the rerun's report says of each stage, by where the first run stopped.
RERUN_STAGES = {
    "surrogate": {"surrogate": "resumed", "score": "ran", "train": "ran"},
    "reference": {"surrogate": "reused"},  # scoring itself had not begun, or had written nothing
    "score": {"surrogate": "reused", "score": "resumed", "train": "ran"},
    "train": {"surrogate": "reused", "score": "reused", "train": "resumed"},
    "save": {"surrogate": "reused", "score": "reused", "train": "resumed"},  # checkpoint-4, nothing left
}


def _assert_stages(out, point) -> None:
    stages = json.loads((out / "bat_report.json").read_text())["stages"]
    assert {k: stages[k] for k in RERUN_STAGES[point]} == RERUN_STAGES[point]


def _assert_clean(out) -> None:
    """Nothing half-done is left: no lock, no temporary file or checkpoint, no part manifest."""
    leftovers = [p for p in out.rglob("*") if p.name == LOCK_NAME or ".tmp" in p.name or "rank" in p.name]
    assert not leftovers, leftovers
    assert (out / "README.md").is_file()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_backbone, shard):
    out = tmp_path_factory.mktemp("stop-reference") / "out"
    run_bat(parse_run_config(_flags(tiny_backbone, out, shard)))
    _assert_clean(out)
    return _outputs(out)


@pytest.mark.parametrize("point", stop_points.POINTS)
def test_sigterm_stops_at_a_safe_point_and_the_rerun_finishes_the_same_run(
        point, tmp_path, tiny_backbone, shard, uninterrupted, monkeypatch):
    out = tmp_path / "out"
    settings = parse_run_config(_flags(tiny_backbone, out, shard))
    with monkeypatch.context() as patch:
        stop_points.install(point, signal.SIGTERM, patch.setattr)
        with preemption.graceful_stop():
            if point == "save":  # the signal comes after the last step: the run completes
                run_bat(settings)
            else:
                with pytest.raises(preemption.Preempted) as stop:
                    run_bat(settings)
                assert stop.value.exit_code == 143 and "Rerun the same command" in str(stop.value)
    assert not (out / LOCK_NAME).exists()  # released on the way out
    if point in ("surrogate", "train"):  # the step in flight was finished and saved
        folder = out / "surrogate" if point == "surrogate" else out
        step = 2 if point == "surrogate" else 3
        assert (folder / f"checkpoint-{step}" / "pytorch_lora_weights.safetensors").is_file()
        assert f"step {step} of" in str(stop.value)
    if point == "score":  # the first batch is kept, the rest was not scored
        parts = list(out.glob("selection.rank*.jsonl"))
        assert len(parts) == 1 and len(read_manifest(parts[0])) == 4
    run_bat(settings)
    _assert_clean(out)
    _assert_stages(out, point)
    _assert_same(_outputs(out), uninterrupted)


@pytest.mark.parametrize("point", stop_points.POINTS)
def test_sigkill_anywhere_then_the_same_command_gives_the_uninterrupted_outputs(
        point, tmp_path, tiny_backbone, shard, uninterrupted, caplog):
    out = tmp_path / "out"
    flags = _flags(tiny_backbone, out, shard)
    # The killed half must run with this process's thread count: CPU kernels reduce in a different
    # order on 1 and 2 threads, and the comparison below is bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-m", "tests.runs.stop_points", point, "SIGKILL", "train", *flags], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / LOCK_NAME).exists()  # a kill leaves its lock file behind
    with caplog.at_level("WARNING", logger="dreambat"):
        run_bat(parse_run_config(flags))
    assert "no longer running" in caplog.text  # the dead run's lock was taken over
    _assert_clean(out)
    _assert_stages(out, point)
    _assert_same(_outputs(out), uninterrupted)
