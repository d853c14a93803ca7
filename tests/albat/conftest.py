"""Tiny models for ALBAT tests: a peft MLP (the tiny UNet task is in tests/conftest.py)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from dreambat.albat.blocks import LoraBlocks


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


def image_batch(n, offset=0, seed=0, size=32):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "prompts": [f"a red star number {i}" for i in range(offset, offset + n)],
        "keys": [f"cand-{i:04d}" for i in range(offset, offset + n)],
    }
