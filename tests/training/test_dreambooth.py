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


def _merged(module, state, prefix):
    """``module`` with every LoRA pair of ``state`` under ``prefix`` folded into its weights by hand:
    W + up @ down (alpha = rank, scale 1). Returns the number of layers changed."""
    import re

    pattern = re.compile(rf"^{prefix}\.(.+)\.(?:lora|lora_linear_layer)\.down\.weight$")
    changed = 0
    with torch.no_grad():
        for key, down in state.items():
            match = pattern.match(key)
            if match:
                layer = module.get_submodule(match.group(1))
                layer.weight += state[key.replace(".down.", ".up.")] @ down
                changed += 1
    return changed


def test_a_loaded_lora_equals_the_trained_model_and_its_weights_folded_in_by_hand(
        tiny_backbone, subject_dir, tmp_path, monkeypatch):
    """After ``pipe.load_lora_weights``, the UNet and text encoder compute what the trained models
    computed in memory at the end of training, and what the base model with each saved LoRA pair
    added to its weight computes: every layer, at scale 1."""
    from dreambat.backbone.load import load_backbone
    from dreambat.constants import TEXT_ENCODER_LORA_TARGET_MODULES, UNET_LORA_TARGET_MODULES

    trained = {}
    save_outputs = dreambooth._save_outputs

    def keep_models(config, accelerator, backbone, *args, **kwargs):
        trained["unet"] = accelerator.unwrap_model(backbone.unet)
        trained["text_encoder"] = accelerator.unwrap_model(backbone.text_encoder)
        return save_outputs(config, accelerator, backbone, *args, **kwargs)

    monkeypatch.setattr(dreambooth, "_save_outputs", keep_models)
    result = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, train_text_encoder=True, learning_rate=1e-2,
                                    validation_prompt=None))
    state = load_file(result.lora_path)
    base = load_backbone(str(tiny_backbone))

    def targets(module, names):  # peft's rule: a module whose name ends with a target
        return sum(any(n.endswith(f".{t}") for t in names) for n, _ in module.named_modules())

    # every targeted layer has its pair in the file, and each is folded in
    assert _merged(base.unet, state, "unet") == targets(base.unet, UNET_LORA_TARGET_MODULES) > 0
    assert _merged(base.text_encoder, state, "text_encoder") == targets(base.text_encoder,
                                                                         TEXT_ENCODER_LORA_TARGET_MODULES) > 0

    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone, local_files_only=True)
    ids = pipe.tokenizer(["a photo of sks star"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        before = pipe.unet(latents, timesteps, pipe.text_encoder(ids)[0].repeat(2, 1, 1)).sample
        pipe.load_lora_weights(result.output_dir)
        context = pipe.text_encoder(ids)[0]
        want_context = base.text_encoder(ids)[0]
        torch.testing.assert_close(context, want_context, rtol=1e-4, atol=1e-5)
        got = pipe.unet(latents, timesteps, context.repeat(2, 1, 1)).sample
        want = base.unet(latents, timesteps, want_context.repeat(2, 1, 1)).sample
        torch.testing.assert_close(trained["text_encoder"](ids)[0], context, rtol=1e-4, atol=1e-5)
        in_memory = trained["unet"](latents, timesteps, context.repeat(2, 1, 1)).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(in_memory, got, rtol=1e-4, atol=1e-5)
    assert (want - before).abs().max() > 100 * (got - want).abs().max() + 1e-4  # the LoRA matters here
