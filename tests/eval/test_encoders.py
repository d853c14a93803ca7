"""Evaluator loading: the tiny ones through the real code paths, and clear errors offline."""

import numpy as np
import pytest
import torch
from PIL import Image

from dreambat.errors import ConfigError, ModelNotFoundError
from dreambat.eval.encoders import ClipEncoder, DinoEncoder, dino_transform


def test_dino_preprocessing_is_resize_256_crop_224():
    image = Image.new("RGB", (400, 300), "red")
    resize, crop = dino_transform().transforms[:2]
    assert resize.size == 256 and resize.interpolation.value == "bicubic" and crop.size == (224, 224)
    assert dino_transform()(image).shape == (3, 224, 224)


def test_tiny_clip_loads_from_local_dir_the_same(clip, tiny_evaluators):
    other = ClipEncoder.load(f"local-dir:{tiny_evaluators.clip_pretrained.parent}", None, device="cpu")
    image = Image.fromarray(np.full((20, 20, 3), 120, dtype=np.uint8))
    torch.testing.assert_close(other.embed_images([image]), clip.embed_images([image]))
    torch.testing.assert_close(other.embed_texts(["a dog"]), clip.embed_texts(["a dog"]))


def test_missing_models_fail_with_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        DinoEncoder.load(str(tmp_path / "no-dino"))
    with pytest.raises(ModelNotFoundError, match="hf download facebook/dino-vits16"):
        DinoEncoder.load("facebook/dino-vits16")  # not in the (offline) cache
    with pytest.raises(ModelNotFoundError, match="Unknown open_clip model"):
        ClipEncoder.load("ViT-Q-99")
    with pytest.raises(ModelNotFoundError, match="neither a pretrained tag"):
        ClipEncoder.load("ViT-B-32", str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="random CLIP weights"):
        ClipEncoder.load("ViT-B-32", None)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ClipEncoder.load(str(tmp_path / "cfg.json"), "x.pt")
