"""Which adapter weights become blocks: peft's declaration decides, and what the core cannot score is refused."""

import pickle

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from dreambat.albat import UnsupportedAdapterError, register_layer
from dreambat.albat import layers as albat_layers
from dreambat.albat.blocks import LoraBlocks, lora_factors
from dreambat.albat.gradients import reference_rows
from dreambat.errors import ConfigError
from tests.albat.conftest import MLP, RegressionTask
from tests.albat.test_gradients import ConvNet


def _lora(model, targets, **config):
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False, **config))


def _declared(name):
    """The adapter container of a factor name ``<layer path>.<container>.<adapter>``."""
    return name.rsplit(".", 2)[1]


def test_factors_of_linear_and_conv2d_loras_are_found():
    model = _lora(ConvNet(), ["conv1", "conv2", "head"])
    factors = dict(lora_factors(model))
    assert len(factors) == 6
    assert {type(m) for m in factors.values()} == {nn.Conv2d, nn.Linear}
    assert {_declared(n) for n in factors} == {"lora_A", "lora_B"}
    blocks = LoraBlocks.from_models(model)
    assert blocks.names == tuple(f"{name}.weight" for name in factors)


def test_found_factor_names_are_peft_s_declaration():
    model = _lora(ConvNet(), ["conv1", "conv2", "head"])
    found: dict[str, list[str]] = {}
    for name, _ in lora_factors(model):
        layer_path, declared, _adapter = name.rsplit(".", 2)
        found.setdefault(layer_path, []).append(declared)
    layers = {path: m for path, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert set(found) == set(layers)
    for path, layer in layers.items():
        holding = [n for n in layer.adapter_layer_names if len(getattr(layer, n))]
        assert found[path] == holding == ["lora_A", "lora_B"]
    assert set(type(next(iter(layers.values()))).adapter_layer_names) == set(LoraLayer.adapter_layer_names)


def test_a_container_that_a_layer_declares_is_followed():
    model = _lora(MLP(), ["fc1"])
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    layer.adapter_layer_names = (*layer.adapter_layer_names, "lora_extra")
    layer.lora_extra = nn.ModuleDict({"default": nn.Linear(2, 2, bias=False)})
    names = [name for name, _ in lora_factors(model)]
    assert names[-1].endswith("fc1.lora_extra.default")
    assert [_declared(n) for n in names] == ["lora_A", "lora_B", "lora_extra"]


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.fc = nn.Linear(6, 1)

    def forward(self, x):
        return self.fc(self.emb(x)).mean(dim=(1, 2))


def test_an_embedding_lora_is_refused_naming_the_module():
    model = _lora(Tokens(), ["emb", "fc"])
    with pytest.raises(UnsupportedAdapterError, match=r"emb\.lora_embedding_A\.default.*Embedding") as info:
        LoraBlocks.from_models(model)
    error = info.value
    assert isinstance(error, ConfigError)
    assert error.module.endswith("emb.lora_embedding_A.default") and error.layer_type == "Embedding"
    assert "bare parameters" in error.reason and "target_modules" in str(error)
    assert "--" not in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert (again.module, again.layer_type, again.reason, str(again)) == (
        error.module, error.layer_type, error.reason, str(error))


def test_a_frozen_embedding_lora_is_refused_too():
    model = _lora(Tokens(), ["emb", "fc"])
    for name, param in model.named_parameters():
        if "lora_embedding" in name:
            param.requires_grad_(False)
    with pytest.raises(UnsupportedAdapterError, match="emb"):
        LoraBlocks.from_models(model)


class Sequence1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=2)).squeeze(-1)


def test_an_unregistered_factor_type_is_refused_until_registered(monkeypatch):
    model = _lora(Sequence1d(), ["conv", "head"])
    with pytest.raises(UnsupportedAdapterError, match=r"conv\.lora_A\.default.*Conv1d.*register_layer") as info:
        LoraBlocks.from_models(model)
    assert info.value.layer_type == "Conv1d" and "--" not in str(info.value)

    monkeypatch.setattr(albat_layers, "_REGISTRY", dict(albat_layers._REGISTRY))  # undone after the test
    register_layer(nn.Conv1d, lambda layer, x, h: nn.functional.conv1d(x, h), lambda layer, x, g: None)
    blocks = LoraBlocks.from_models(model)
    assert {type(m) for m in blocks.modules} == {nn.Conv1d, nn.Linear}


def test_dora_is_refused_with_plain_lora_as_the_way_out():
    model = _lora(MLP(), ["fc1"], use_dora=True)
    with pytest.raises(UnsupportedAdapterError, match=r"fc1\.lora_magnitude_vector\.default.*use_dora=False"):
        LoraBlocks.from_models(model)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 1, batch_first=True)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        h, _ = self.mha(x, x, x)
        return self.fc(h).mean(dim=(1, 2))


def test_factors_whose_forward_never_runs_are_refused_when_scored():
    """peft's LoRA for nn.MultiheadAttention merges its factors into the attention weights: the
    factor layers are Linear, but hooks never see them, so they are refused instead of scored 0."""
    model = _lora(Attention(), ["mha", "fc"])
    blocks = LoraBlocks.from_models(model)
    batch = (torch.randn(3, 5, 4), torch.randn(3))
    with pytest.raises(UnsupportedAdapterError, match=r"mha\..*lora_A\.default.*forward never runs") as info:
        reference_rows(RegressionTask(model), blocks, [batch])
    assert "target_modules" in str(info.value) and "--" not in str(info.value)
