"""Tiny evaluators, a tiny LoRA and subject folders for the evaluation tests (all offline)."""

import shutil
from pathlib import Path

import pytest
import torch

from dreambat.backbone.tiny import build_tiny_components
from dreambat.eval.encoders import ClipEncoder, DinoEncoder
from dreambat.eval.tiny import TinyEvaluators, write_tiny_evaluators
from dreambat.lora import add_unet_lora, save_lora
from tests.conftest import ASSETS


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine, tiny ops are ~10x faster than with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_evaluators(tmp_path_factory) -> TinyEvaluators:
    """A tiny DINO ViT folder and a tiny open_clip config + checkpoint, written once."""
    return write_tiny_evaluators(tmp_path_factory.mktemp("evaluators"), seed=0)


@pytest.fixture(scope="session")
def dino(tiny_evaluators) -> DinoEncoder:
    return DinoEncoder.load(str(tiny_evaluators.dino_model), device="cpu", batch_size=3)


@pytest.fixture(scope="session")
def clip(tiny_evaluators) -> ClipEncoder:
    return ClipEncoder.load(str(tiny_evaluators.clip_model), str(tiny_evaluators.clip_pretrained),
                            device="cpu", batch_size=3)


def _save_random_lora(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    unet = build_tiny_components("test")["unet"]
    add_unet_lora(unet, rank=2, init_lora_weights=False)
    save_lora(folder, unet)
    return folder


@pytest.fixture(scope="session")
def lora_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two LoRA folders (non-zero, different) for the 'test' tiny backbone."""
    root = tmp_path_factory.mktemp("loras")
    return _save_random_lora(root / "lora_a", 1), _save_random_lora(root / "lora_b", 2)


@pytest.fixture
def two_subjects(tmp_path) -> list[Path]:
    """Two subject folders: the bundled star photos, and three of them named as a 'dog'."""
    star = Path(shutil.copytree(ASSETS / "subject", tmp_path / "star"))
    dog = tmp_path / "dog"
    dog.mkdir()
    for photo in sorted(star.iterdir())[:3]:
        shutil.copy(photo, dog / photo.name)
    return [star, dog]
