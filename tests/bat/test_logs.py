"""Logs a person can read when stderr is a file: plain progress lines, whole INFO lines, each
warning once, a line per validation and save, the README's stage numbers."""

import logging
import shutil

from dreambat.training.config import TrainConfig
from dreambat.training.setup import check_training_inputs
from tests.bat.test_pipeline import _flags, _launch
from tests.conftest import REPO


def test_a_non_tty_log_has_no_redraws_and_says_each_thing_once(tmp_path, tiny_backbone):
    from dreambat.data.shard_writer import write_shards
    from dreambat_world.synthetic import backbone_records

    subject = shutil.copytree(REPO / "assets" / "subject", tmp_path / "subject")
    (subject / "broken.jpg").write_bytes(b"not a jpeg")
    write_shards(list(backbone_records(8, seed=1, size=32)), tmp_path / "shard.tar")
    done = _launch(_flags(tiny_backbone, subject, tmp_path / "out", str(tmp_path / "shard.tar"),
                          "--validation_steps", "2", "--report_to", "none"))
    log = done.stderr
    assert "\r" not in log and max(len(line) for line in log.splitlines()) < 1000
    assert log.count("Skipped 1 unreadable image file(s)") == 1  # not once per stage
    for stage in range(1, 6):
        assert f"Stage {stage}/5" in log, stage
    assert "train: validation at step 2" in log and "train: saved the LoRA weights" in log
    assert "surrogate: 3/3 step done" in log and "score: " in log  # the periodic progress lines


def test_fp16_on_a_cpu_warns_and_names_the_alternatives(tmp_path, tiny_backbone, caplog):
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_backbone), instance_data_dir=str(REPO / "assets" / "subject"),
                         instance_prompt="a photo of sks star", output_dir=str(tmp_path), mixed_precision="fp16")
    with caplog.at_level(logging.WARNING, logger="dreambat"):
        check_training_inputs(config)
    assert "--mixed_precision fp16" in caplog.text and "--mixed_precision no" in caplog.text and "bf16" in caplog.text
