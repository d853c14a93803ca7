"""SDXL backbones built offline: the released shapes on the meta device, the tiny one's folder,
the loader's SDXL detection and ``--pretrained_vae_model_name_or_path``."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from dreambat.backbone import sdxl
from dreambat.backbone.load import is_sdxl_folder, load_backbone, resolve_vae
from dreambat.backbone.tiny import BACKBONE_SIZES
from dreambat.backbone.tokenizer import build_real_clip_tokenizer
from dreambat.cli import MAKE_BACKBONE_SIZES
from dreambat.errors import ModelNotFoundError


def test_sdxl_configs_have_the_released_parameter_counts():
    """The shapes alone, built on the meta device: no memory, no weights."""
    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**sdxl.SDXL_UNET), "vae": AutoencoderKL(**sdxl.SDXL_VAE),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**sdxl.SDXL_TEXT_ENCODER)),
                  "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**sdxl.SDXL_TEXT_ENCODER_2))}
    assert {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()} == sdxl.SDXL_PARAMETERS
    # the UNet's added embedding takes the pooled text (1280) and six 256-wide time-id embeddings
    assert sdxl.SDXL_UNET["projection_class_embeddings_input_dim"] == 1280 + sdxl.TIME_IDS_PER_IMAGE * 256
    assert sdxl.SDXL_UNET["cross_attention_dim"] == 768 + 1280  # both encoders' widths side by side


def test_the_second_tokenizer_pads_with_id_0_as_sdxls_does():
    second = build_real_clip_tokenizer()
    second.pad_token = sdxl.SECOND_PAD_TOKEN
    assert second.pad_token_id == 0 and build_real_clip_tokenizer().pad_token_id == 49407


def test_tiny_sdxl_folder_is_detected_loaded_and_samples(tiny_sdxl_backbone, tiny_backbone):
    index = json.loads((tiny_sdxl_backbone / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and {"text_encoder_2", "tokenizer_2"} <= set(index)
    assert is_sdxl_folder(tiny_sdxl_backbone) and not is_sdxl_folder(tiny_backbone)
    backbone = load_backbone(str(tiny_sdxl_backbone))
    assert backbone.is_sdxl and backbone.native_resolution == sdxl.TINY_SDXL_RESOLUTION
    assert all(not p.requires_grad for m in backbone.models for p in m.parameters())
    assert not load_backbone(str(tiny_backbone)).is_sdxl
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_backbone, add_watermarker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red star", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_make_backbone_offers_every_size():
    assert MAKE_BACKBONE_SIZES == BACKBONE_SIZES
    assert {"sdxl", "test-sdxl"} <= set(BACKBONE_SIZES)


def test_a_replacement_vae_is_loaded_in_place_of_the_folders(tmp_path, tiny_sdxl_backbone):
    with pytest.raises(ModelNotFoundError, match="not a VAE folder"):
        resolve_vae(str(tmp_path))
    original = load_backbone(str(tiny_sdxl_backbone)).vae
    with torch.random.fork_rng():
        torch.manual_seed(7)
        other = AutoencoderKL(**original.config)
    other.save_pretrained(tmp_path / "vae")
    swapped = load_backbone(str(tiny_sdxl_backbone), vae=str(tmp_path / "vae")).vae
    key = next(iter(other.state_dict()))
    assert torch.equal(swapped.state_dict()[key], other.state_dict()[key])
    assert not torch.equal(swapped.state_dict()[key], original.state_dict()[key])
