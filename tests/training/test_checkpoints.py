"""Checkpoints: resume equivalence, pruning, 'latest' with nothing to resume, refused resumes."""

from __future__ import annotations

import logging

import pytest
from safetensors.torch import load_file

from dreambat.errors import ConfigError
from dreambat.training import dreambooth
from dreambat.training.checkpoints import list_checkpoints, prune_checkpoints, resolve_resume
from dreambat.training.dreambooth import run_dreambooth
from tests.training.test_dreambooth import _config


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint"))


def _assert_same_weights(a_path, b_path) -> None:
    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_backbone, subject_dir, tmp_path):
    # Dropout, random flips, validation every 2 steps and a text-encoder LoRA all draw randomness
    # or touch the models between steps; none of it may make the resumed run diverge.
    settings = dict(max_train_steps=6, checkpointing_steps=3, lora_dropout=0.1, random_flip=True,
                    train_text_encoder=True, validation_steps=2, num_validation_images=1)
    full = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "full", **settings))
    assert _names(full.output_dir) == ["checkpoint-3", "checkpoint-6"] and full.resumed_from is None

    first = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "split", **{**settings, "max_train_steps": 3}))
    assert _names(first.output_dir) == ["checkpoint-3"]
    resumed = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "split",
                                     **settings, resume_from_checkpoint="latest"))
    assert resumed.resumed_from.endswith("checkpoint-3") and resumed.state.start_step == 3
    assert len(resumed.state.losses) == 3
    assert resumed.state.losses == pytest.approx(full.state.losses[3:], abs=1e-6)
    assert resumed.source_counts == full.source_counts == {"backbone": 0, "subject": 12}
    _assert_same_weights(full.lora_path, resumed.lora_path)
    # A checkpoint's own LoRA file is the state after its step.
    _assert_same_weights(full.output_dir / "checkpoint-6" / "pytorch_lora_weights.safetensors", full.lora_path)
    assert "resumed from" in (resumed.output_dir / "README.md").read_text()


def test_checkpoint_limit_keeps_exactly_the_newest(tiny_backbone, subject_dir, tmp_path):
    result = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, max_train_steps=5, checkpointing_steps=1,
                                    checkpoints_total_limit=2, validation_prompt=None))
    assert _names(result.output_dir) == ["checkpoint-4", "checkpoint-5"]
    state = result.output_dir / "checkpoint-5"
    assert (state / "optimizer.bin").is_file() and (state / "random_states_0.pkl").is_file()
    assert not (state / "model.safetensors").exists()  # the frozen backbone is never copied


def test_latest_with_nothing_to_resume_starts_fresh(tiny_backbone, subject_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dreambat"):
        result = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, max_train_steps=1,
                                        resume_from_checkpoint="latest", validation_prompt=None))
    assert result.resumed_from is None and result.state.start_step == 0 and len(result.state.losses) == 1
    assert "no checkpoint" in caplog.text


def test_missing_named_checkpoint_is_refused_before_loading(tiny_backbone, subject_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(dreambooth, "load_backbone", _forbidden)
    with pytest.raises(ConfigError, match="checkpoint-7.*does not exist"):
        run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, resume_from_checkpoint="checkpoint-7"))


def test_resume_with_another_text_encoder_setting_is_refused(tiny_backbone, subject_dir, tmp_path):
    run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, max_train_steps=1, checkpointing_steps=1,
                           validation_prompt=None))
    with pytest.raises(ConfigError, match="--train_text_encoder"):
        run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, max_train_steps=2, train_text_encoder=True,
                               resume_from_checkpoint="latest", validation_prompt=None))


def test_prune_and_resolve(tmp_path):
    for step in (2, 10, 7, 1):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-12.tmp").mkdir()  # an interrupted save is never a candidate
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-7", "checkpoint-10"]
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_resume(tmp_path, "checkpoint-2") == tmp_path / "checkpoint-2"
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoint-7")) == tmp_path / "checkpoint-7"
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(ConfigError, match="not a checkpoint-N folder"):
        resolve_resume(tmp_path, "checkpoint-x")
    prune_checkpoints(tmp_path, 2)
    assert _names(tmp_path) == ["checkpoint-10", "checkpoint-12.tmp", "checkpoint-7", "checkpoint-x"]


def _forbidden(*args, **kwargs):
    raise AssertionError("a model was loaded before the inputs were checked")


