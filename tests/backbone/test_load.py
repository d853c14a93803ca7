import shutil

import pytest

from dreambat.backbone.load import load_backbone, resolve_backbone
from dreambat.backbone.tiny import TINY_SIZES
from dreambat.errors import ModelNotFoundError


def test_load_backbone_freezes_everything(tiny_backbone):
    backbone = load_backbone(str(tiny_backbone))
    assert backbone.native_resolution == TINY_SIZES["test"].resolution
    for model in (backbone.unet, backbone.vae, backbone.text_encoder):
        assert not any(p.requires_grad for p in model.parameters())


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist|neither a local folder"):
        resolve_backbone(str(tmp_path / "nope" / "sd"))


def test_incomplete_folder_names_missing_parts(tiny_backbone, tmp_path):
    broken = shutil.copytree(tiny_backbone, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFoundError, match="unet"):
        resolve_backbone(str(broken))


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_backbone(str(path))


def test_uncached_hub_id_says_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        resolve_backbone("dreambat-tests/not-a-cached-model-4f1c")


def test_a_missing_backbone_folder_names_the_path_in_the_fix(tmp_path):
    from dreambat.backbone.load import resolve_backbone
    from dreambat.errors import ModelNotFoundError

    missing = str(tmp_path / "no" / "such-sd")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_backbone(missing)
    assert f"dreambat make-backbone {missing}" in str(error.value) and "{name_or_path}" not in str(error.value)
