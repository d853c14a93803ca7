import json
import math
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from dreambat.training.config import TrainConfig
from dreambat.errors import ModelNotFoundError, SubjectDataError
from dreambat.training import dreambooth
from dreambat.training.dreambooth import run_dreambooth
from tests.conftest import REPO


def _config(tiny_backbone, subject_dir, tmp_path, **overrides):
    settings = dict(
        pretrained_model_name_or_path=str(tiny_backbone), instance_data_dir=str(subject_dir),
        instance_prompt="a photo of sks star", output_dir=str(tmp_path / "out"), seed=0,
        train_batch_size=2, max_train_steps=3, learning_rate=1e-3, report_to="none",
        validation_prompt="a sks star", num_validation_images=2, num_inference_steps=2,
    )
    return TrainConfig(**{**settings, **overrides})


def test_run_writes_every_output_and_the_lora_loads(tiny_backbone, subject_dir, tmp_path):
    result = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path))
    out = result.output_dir
    assert len(result.state.losses) == 3 and all(math.isfinite(x) for x in result.state.losses)
    assert load_file(result.lora_path)
    saved = json.loads((out / "dreambat_config.json").read_text())
    assert saved["resolution"] == 32  # resolved from the backbone's native size
    assert "a photo of sks star" in (out / "README.md").read_text()
    assert Image.open(result.grid_path).size[0] > 2 * 32

    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    sample = lambda: pipe("a sks star", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                          output_type="np").images
    before = sample()
    pipe.load_lora_weights(out)
    assert abs(sample() - before).max() > 1e-5


def test_same_seed_same_weights(tiny_backbone, subject_dir, tmp_path):
    runs = [run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / str(i), validation_prompt=None))
            for i in range(2)]
    a, b = (load_file(r.lora_path) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_text_encoder_lora_and_tensorboard(tiny_backbone, subject_dir, tmp_path):
    result = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, train_text_encoder=True,
                                    report_to="tensorboard", validation_prompt=None, max_train_steps=2))
    assert any(k.startswith("text_encoder.") for k in load_file(result.lora_path))
    assert list((result.output_dir / "logs").rglob("events.out.tfevents*"))


@pytest.mark.parametrize("broken", ["backbone", "subject"])
def test_bad_paths_fail_before_any_model_loads(tiny_backbone, subject_dir, tmp_path, monkeypatch, broken):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(dreambooth, "load_backbone", forbidden)
    if broken == "backbone":
        config = _config(tmp_path / "missing-sd", subject_dir, tmp_path)
        error = ModelNotFoundError
    else:
        config = _config(tiny_backbone, tmp_path / "no-photos", tmp_path)
        error = SubjectDataError
    with pytest.raises(error, match="missing-sd|no-photos"):
        run_dreambooth(config)


def test_entry_point_trains_from_the_command_line(tiny_backbone, subject_dir, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "train_dreambooth_bat.py", "--pretrained_model_name_or_path", str(tiny_backbone),
         "--instance_data_dir", str(subject_dir), "--instance_prompt", "a photo of sks star",
         "--output_dir", str(out), "--max_train_steps", "2", "--report_to", "none", "--seed", "0",
         "--selection", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
