"""Prior preservation, the subject/backbone mixture, validation epochs and 8-bit Adam."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from dreambat.errors import ConfigError, DataError
from dreambat.training import dreambooth
from dreambat.backbone.load import native_resolution
from dreambat.inputs import resolve_inputs
from dreambat.training.dreambooth import run_dreambooth
from tests.training.test_dreambooth import _config


class FakeBackbone(Dataset):
    """Captioned backbone samples at ``size`` px (what the lead's selected dataset yields)."""

    def __init__(self, n: int = 6, size: int = 32):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        pixels = torch.linspace(-1, 1, 3 * self.size * self.size).reshape(3, self.size, self.size)
        return {"pixel_values": pixels * (index + 1) / self.n, "prompt": f"a backbone caption {index}",
                "key": f"bb-{index}"}


def _forbidden(*args, **kwargs):
    raise AssertionError("a model was loaded before the inputs were checked")


def test_prior_preservation_generates_counts_and_reuses_class_images(tiny_backbone, subject_dir, tmp_path):
    class_dir = tmp_path / "class"
    settings = dict(with_prior_preservation=True, class_data_dir=str(class_dir), class_prompt="a photo of a star",
                    num_class_images=3, sample_batch_size=2, max_train_steps=2, validation_prompt=None)
    first = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "a", **settings))
    images = sorted(class_dir.iterdir())
    assert len(images) == 3 and all(Image.open(p).size == (32, 32) for p in images)
    assert (first.class_images.existing, first.class_images.generated) == (0, 3)
    assert first.source_counts == {"backbone": 0, "class": 4, "subject": 4}  # 2 steps x B=2, each side
    assert all(math.isfinite(x) for x in first.state.losses)
    assert "prior preservation" in (first.output_dir / "README.md").read_text()

    stamps = [p.stat().st_mtime_ns for p in images]
    again = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "b", **settings))
    assert (again.class_images.existing, again.class_images.generated) == (3, 0)
    assert [p.stat().st_mtime_ns for p in sorted(class_dir.iterdir())] == stamps


def test_class_rows_add_the_weighted_prior_loss(tiny_backbone, subject_dir, tmp_path):
    from dreambat.training.loop import training_loss

    backbone = dreambooth.load_backbone(str(tiny_backbone))
    config = _config(tiny_backbone, subject_dir, tmp_path, with_prior_preservation=True, class_data_dir="c",
                     class_prompt="a star")
    batch = {"pixel_values": torch.rand(4, 3, 32, 32) * 2 - 1, "prompts": ["a sks star"] * 2 + ["a star"] * 2,
             "sources": ["subject", "subject", "class", "class"]}

    def loss_of(weight):
        torch.manual_seed(0)  # the same noise and timesteps for every weight
        weighted = type(config)(**{**config.to_dict(), "prior_loss_weight": weight})
        return training_loss(backbone, weighted, batch, backbone.text_encoder, backbone.unet).item()

    instance, half, full = loss_of(0.0), loss_of(0.5), loss_of(1.0)
    prior = full - instance
    assert prior > 0 and half - instance == pytest.approx(0.5 * prior, rel=1e-5)
    torch.manual_seed(0)
    plain = training_loss(backbone, config, {k: v for k, v in batch.items() if k != "sources"},
                          backbone.text_encoder, backbone.unet).item()
    assert plain == pytest.approx((instance + prior) / 2, rel=1e-5)  # all four rows, equally weighted


def test_mixture_trains_on_backbone_rows_with_share_gamma(tiny_backbone, subject_dir, tmp_path):
    result = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, max_train_steps=4, validation_prompt=None),
                            backbone_data=FakeBackbone(), gamma=0.5, model_card_sections={"BAT": "gamma 0.5"})
    counts = result.source_counts
    assert counts["subject"] + counts["backbone"] == 8 and counts["backbone"] > 0
    card = (result.output_dir / "README.md").read_text()
    assert "## BAT\n\ngamma 0.5" in card and "backbone" in card


@pytest.mark.parametrize("backbone_data, gamma, error, message", [
    (FakeBackbone(size=64), 0.5, DataError, "at 32 px"),
    (None, 0.5, ConfigError, "asks for backbone samples"),
    (FakeBackbone(), 1.0, ConfigError, r"\[0, 1\)"),
])
def test_bad_mixtures_fail_before_any_model_loads(tiny_backbone, subject_dir, tmp_path, monkeypatch,
                                                  backbone_data, gamma, error, message):
    monkeypatch.setattr(dreambooth, "load_backbone", _forbidden)
    with pytest.raises(error, match=message):
        run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path), backbone_data=backbone_data, gamma=gamma)


def test_validation_epochs(tiny_backbone, subject_dir, tmp_path, monkeypatch):
    def fake_sampling(backbone, prompt, num_images, **kwargs):
        return [Image.new("RGB", (32, 32))] * num_images

    monkeypatch.setattr(dreambooth, "sample_during_training", fake_sampling)
    seen = []
    monkeypatch.setattr(dreambooth, "log_images", lambda acc, tag, images, step: seen.append((tag, step)))
    # 5 subject images, batch 2: an epoch is 3 steps; validate every epoch before the last step.
    run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, max_train_steps=7, validation_epochs=1))
    assert [step for tag, step in seen if tag == "train/validation"] == [3, 6]


def test_8bit_adam_without_bitsandbytes_fails_before_any_model_loads(tiny_backbone, subject_dir, tmp_path,
                                                                      monkeypatch):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    monkeypatch.setattr(dreambooth, "load_backbone", _forbidden)
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, use_8bit_adam=True))


def test_class_data_dir_that_is_a_file_fails_before_any_model_loads(tiny_backbone, subject_dir, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(dreambooth, "load_backbone", _forbidden)
    (tmp_path / "class.txt").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path, with_prior_preservation=True,
                               class_data_dir=str(tmp_path / "class.txt"), class_prompt="a star"))


def test_resolution_without_loading_weights(tiny_backbone, subject_dir, tmp_path):
    assert native_resolution(tiny_backbone) == 32
    assert resolve_inputs(_config(tiny_backbone, subject_dir, tmp_path)).resolution == 32
    assert resolve_inputs(_config(tiny_backbone, subject_dir, tmp_path, resolution=48)).resolution == 48
