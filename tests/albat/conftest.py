"""Tiny models for ALBAT tests: a peft MLP and the tiny UNet with a non-zero LoRA."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from dreambat.albat.blocks import LoraBlocks
from dreambat.albat.diffusion_task import DiffusionLossTask
from dreambat.backbone.load import load_backbone
from dreambat.lora import add_unet_lora


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))).squeeze(-1)


class RegressionTask:
    """Squared error of a model on (x, y) batches: a non-diffusion ScoringTask."""

    def __init__(self, model):
        self.model = model

    def loss_matrix(self, batch):
        x, y = batch
        return (self.model(x) - y) ** 2

    def batch_size(self, batch):
        return len(batch[0])


@pytest.fixture
def mlp_task():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), LoraConfig(r=3, target_modules=["fc1", "fc2"], init_lora_weights=False))
    return RegressionTask(model), LoraBlocks.from_models(model)


@pytest.fixture(scope="module")
def unet_task(tmp_path_factory):
    """K=2 diffusion task over the 'test' tiny backbone with a random (non-zero) rank-2 LoRA."""
    from dreambat.backbone.tiny import write_tiny_backbone

    folder = write_tiny_backbone(tmp_path_factory.mktemp("albat") / "sd", "test", seed=0)
    backbone = load_backbone(str(folder))
    torch.manual_seed(0)
    add_unet_lora(backbone.unet, rank=2, init_lora_weights=False)
    return DiffusionLossTask(backbone, num_timesteps=2), LoraBlocks.from_models(backbone.unet)


def image_batch(n, offset=0, seed=0, size=32):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "prompts": [f"a red star number {i}" for i in range(offset, offset + n)],
        "keys": [f"cand-{i:04d}" for i in range(offset, offset + n)],
    }
