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


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    """A private copy of the bundled subject photos (tests may add bad files to it)."""
    return Path(shutil.copytree(ASSETS / "subject", tmp_path / "subject"))
