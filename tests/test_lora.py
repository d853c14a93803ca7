import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from dreambat.backbone.tiny import build_tiny_components
from dreambat.errors import ConfigError
from dreambat.lora import add_text_encoder_lora, add_unet_lora, lora_parameters, save_lora


def _sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a star", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def test_only_lora_parameters_train():
    unet = build_tiny_components("test")["unet"]
    add_unet_lora(unet, rank=2)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(lora_parameters(unet)) == len(trainable)
    # A fresh LoRA is a no-op: lora_B starts at zero (the DreamBooth initialisation).
    assert all(p.abs().sum() == 0 for n, p in unet.named_parameters() if "lora_B" in n)


def test_one_step_saves_and_loads_with_load_lora_weights(tiny_backbone, tmp_path):
    components = build_tiny_components("test", seed=0)  # the same weights as the tiny_backbone folder
    unet, text_encoder = components["unet"], components["text_encoder"]
    add_unet_lora(unet, rank=4)
    params = lora_parameters(unet)
    optimizer = torch.optim.SGD(params, lr=10.0)
    latents = torch.randn(2, 4, unet.config.sample_size, unet.config.sample_size)
    context = text_encoder(torch.zeros(2, 77, dtype=torch.long))[0]
    loss = unet(latents, torch.tensor([100, 500]), context).sample.pow(2).mean()
    loss.backward()
    optimizer.step()
    assert any(p.abs().sum() > 0 for n, p in unet.named_parameters() if "lora_B" in n)

    path = save_lora(tmp_path / "lora", unet)
    keys = load_file(path).keys()
    assert keys and all(k.startswith("unet.") for k in keys)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone, local_files_only=True)
    before = _sample(pipe)
    pipe.load_lora_weights(tmp_path / "lora")
    after = _sample(pipe)
    assert abs(after - before).max() > 1e-4


def test_text_encoder_lora_is_saved_under_its_prefix(tmp_path):
    components = build_tiny_components("test")
    add_unet_lora(components["unet"], rank=2, init_lora_weights=False)
    add_text_encoder_lora(components["text_encoder"], rank=2, init_lora_weights=False)
    keys = load_file(save_lora(tmp_path, components["unet"], components["text_encoder"])).keys()
    assert any(k.startswith("text_encoder.") for k in keys)
    assert any(k.startswith("unet.") for k in keys)


def test_a_loaded_text_encoder_lora_is_trainable_and_scored_like_the_unets(tmp_path):
    """Transformers loads a text-encoder LoRA frozen; ALBAT differentiates the trainable factors, so
    load_lora makes them trainable: a surrogate's text-encoder LoRA is scored, not silently left out."""
    from dreambat.albat.blocks import LoraBlocks
    from dreambat.lora import load_lora

    components = build_tiny_components("test")
    add_unet_lora(components["unet"], rank=2, init_lora_weights=False)
    add_text_encoder_lora(components["text_encoder"], rank=2, init_lora_weights=False)
    path = save_lora(tmp_path, components["unet"], components["text_encoder"])
    fresh = build_tiny_components("test")
    for model in (fresh["unet"], fresh["text_encoder"]):
        model.requires_grad_(False)
    load_lora(path, fresh["unet"], fresh["text_encoder"], adapter_name="surrogate")
    unet_params, text_params = lora_parameters(fresh["unet"]), lora_parameters(fresh["text_encoder"])
    assert len(text_params) == len(lora_parameters(components["text_encoder"])) > 0
    blocks = LoraBlocks.from_models(fresh["unet"], fresh["text_encoder"])
    assert len(blocks.dims) == len(unet_params) + len(text_params)
    saved = load_file(path)
    assert sum(k.startswith("text_encoder.") for k in saved) == len(text_params)


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"rank": 4, "dropout": 1.0}])
def test_bad_lora_settings(kwargs):
    unet = build_tiny_components("test")["unet"]
    with pytest.raises(ConfigError):
        add_unet_lora(unet, **kwargs)
