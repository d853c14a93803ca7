import json
import subprocess
import sys

import pytest

from dreambat.cli import parse_train_config
from dreambat.config import TrainConfig
from dreambat.errors import ConfigError
from tests.conftest import REPO

REQUIRED = ["--pretrained_model_name_or_path", "sd", "--instance_data_dir", "d", "--instance_prompt", "a sks dog"]


def test_diffusers_flag_names_parse():
    config = parse_train_config(REQUIRED + [
        "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "7", "--center_crop",
        "--train_text_encoder", "--learning_rate", "3e-4", "--lr_scheduler", "cosine", "--rank", "8",
        "--gradient_accumulation_steps", "2", "--seed", "1", "--snr_gamma", "5", "--report_to", "none",
    ])
    assert config.resolution == 64 and config.max_train_steps == 7 and config.center_crop
    assert config.train_text_encoder and config.lr_scheduler == "cosine" and config.snr_gamma == 5.0


@pytest.mark.parametrize("overrides, message", [
    ({"instance_prompt": "  "}, "instance_prompt"),
    ({"rank": 0}, "--rank"),
    ({"train_batch_size": 0}, "--train_batch_size"),
    ({"resolution": 60}, "multiple of 8"),
    ({"learning_rate": 0.0}, "--learning_rate"),
    ({"lora_dropout": 1.0}, "--lora_dropout"),
    ({"snr_gamma": -1.0}, "--snr_gamma"),
    ({"validation_steps": 10}, "--validation_prompt"),
])
def test_invalid_values_are_refused_with_the_flag_named(overrides, message):
    base = {"pretrained_model_name_or_path": "sd", "instance_data_dir": "d", "instance_prompt": "a sks dog"}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{**base, **overrides})


def test_saved_config_round_trips(tmp_path):
    config = TrainConfig(pretrained_model_name_or_path="sd", instance_data_dir="d", instance_prompt="p", rank=3)
    saved = json.loads(config.save(tmp_path / "c.json").read_text())
    assert TrainConfig(**saved) == config


def test_entry_point_help_lists_diffusers_flags():
    out = subprocess.run([sys.executable, "train_dreambooth_bat.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--pretrained_model_name_or_path", "--instance_data_dir", "--instance_prompt",
                 "--train_text_encoder", "--max_train_steps", "--rank", "--validation_prompt"):
        assert flag in out.stdout


def test_entry_point_rejects_bad_values_before_loading_anything():
    out = subprocess.run([sys.executable, "train_dreambooth_bat.py", *REQUIRED, "--rank", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--rank must be >= 1" in out.stderr
