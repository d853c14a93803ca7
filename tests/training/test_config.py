import json
import subprocess
import sys

import pytest

from dreambat.cli import parse_train_config
from dreambat.training.config import TrainConfig
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
    ({"validation_epochs": 2}, "--validation_prompt"),
    ({"with_prior_preservation": True, "class_prompt": "a dog"}, "needs --class_data_dir"),
    ({"with_prior_preservation": True, "class_data_dir": "c"}, "needs --class_prompt"),
    ({"with_prior_preservation": True, "class_data_dir": "c", "class_prompt": "a dog", "num_class_images": 0},
     "--num_class_images"),
    ({"prior_loss_weight": -1.0}, "--prior_loss_weight"),
    ({"checkpointing_steps": 0}, "--checkpointing_steps"),
    ({"checkpoints_total_limit": 0}, "--checkpoints_total_limit"),
    ({"sample_batch_size": 0}, "--sample_batch_size"),
    ({"resume_from_checkpoint": " "}, "--resume_from_checkpoint"),
])
def test_invalid_values_are_refused_with_the_flag_named(overrides, message):
    base = {"pretrained_model_name_or_path": "sd", "instance_data_dir": "d", "instance_prompt": "a sks dog"}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{**base, **overrides})


def test_diffusers_prior_checkpoint_and_optimizer_flags_parse():
    config = parse_train_config(REQUIRED + [
        "--with_prior_preservation", "--class_data_dir", "cls", "--class_prompt", "a dog",
        "--num_class_images", "50", "--prior_loss_weight", "0.5", "--sample_batch_size", "2",
        "--checkpointing_steps", "100", "--checkpoints_total_limit", "3", "--resume_from_checkpoint", "latest",
        "--use_8bit_adam", "--allow_tf32", "--validation_prompt", "a sks dog", "--validation_epochs", "5",
        "--local_rank", "0",
    ])
    assert config.with_prior_preservation and config.class_data_dir == "cls" and config.num_class_images == 50
    assert config.prior_loss_weight == 0.5 and config.sample_batch_size == 2
    assert (config.checkpointing_steps, config.checkpoints_total_limit) == (100, 3)
    assert config.resume_from_checkpoint == "latest" and config.use_8bit_adam and config.allow_tf32
    assert config.validation_epochs == 5


def test_class_flags_without_prior_preservation_warn():
    base = {"pretrained_model_name_or_path": "sd", "instance_data_dir": "d", "instance_prompt": "a sks dog"}
    with pytest.warns(UserWarning, match="--class_data_dir and --class_prompt.*--with_prior_preservation"):
        TrainConfig(**base, class_data_dir="c", class_prompt="a dog")


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
