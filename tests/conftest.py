"""Shared fixtures: every test runs offline on tiny models built here."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from dreambat.backbone.tiny import write_tiny_backbone  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A diffusers folder holding the 'test'-size tiny backbone (32 px), written once."""
    return write_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny-sd", "test", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_backbone(tmp_path_factory) -> Path:
    """A diffusers folder holding the tiny SDXL ('test-sdxl', 32 px), written once."""
    return write_tiny_backbone(tmp_path_factory.mktemp("backbone-sdxl") / "tiny-sdxl", "test-sdxl", seed=0)


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    """A private copy of the bundled subject photos (tests may add bad files to it)."""
    return Path(shutil.copytree(ASSETS / "subject", tmp_path / "subject"))


@pytest.fixture(scope="module")
def unet_task(tmp_path_factory):
    """K=2 diffusion task over the 'test' tiny backbone with a random (non-zero) rank-2 LoRA."""
    import torch

    from dreambat.albat.blocks import LoraBlocks
    from dreambat.backbone.load import load_backbone
    from dreambat.lora import add_unet_lora
    from dreambat.scoring.diffusion_task import DiffusionLossTask

    folder = write_tiny_backbone(tmp_path_factory.mktemp("albat") / "sd", "test", seed=0)
    backbone = load_backbone(str(folder))
    torch.manual_seed(0)
    add_unet_lora(backbone.unet, rank=2, init_lora_weights=False)
    return DiffusionLossTask(backbone, 2), LoraBlocks.from_models(backbone.unet)
