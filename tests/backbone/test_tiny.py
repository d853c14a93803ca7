import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from dreambat.backbone.tiny import TINY_SIZES, build_tiny_components, write_tiny_backbone
from dreambat.backbone.tokenizer import BASE_WORDS, build_clip_tokenizer
from dreambat.errors import ConfigError


def test_written_folder_loads_offline_and_samples(tiny_backbone):
    index = json.loads((tiny_backbone / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red star", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    size = TINY_SIZES["test"].resolution
    assert out.images.shape == (1, size, size, 3)
    assert np.isfinite(out.images).all()
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.clip_sample


def test_same_seed_same_weights_other_seed_differs():
    a = build_tiny_components("test", seed=3)["unet"].state_dict()
    b = build_tiny_components("test", seed=3)["unet"].state_dict()
    c = build_tiny_components("test", seed=4)["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_components("test", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    folder = write_tiny_backbone(tmp_path / "sd", "test", seed=0)
    marker = folder / "unet" / "marker"
    marker.write_text("x")
    write_tiny_backbone(folder, "test", seed=1)
    assert marker.exists()
    write_tiny_backbone(folder, "test", seed=1, overwrite=True)
    assert not marker.exists()
    assert not (tmp_path / "sd.tmp").exists()


def test_demo_size_native_resolution():
    spec = TINY_SIZES["demo"]
    unet = build_tiny_components("demo")["unet"]
    assert unet.config.sample_size * 2 ** (len(spec.vae_channels) - 1) == spec.resolution


def test_unknown_size_lists_valid_names():
    with pytest.raises(ConfigError, match="demo"):
        build_tiny_components("huge")


def test_tokenizer_knows_words_as_single_tokens_and_still_spells_others():
    words = ["striped", "right", "star", "checkered"]
    tok = build_clip_tokenizer(words)
    for word in [*words, *BASE_WORDS]:
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids) == [word + "</w>"], word
    ids = tok("zebra!", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids).replace(" ", "") == "zebra!"


def test_tokenizer_makes_every_world_word_one_token_with_contiguous_ids():
    from dreambat.backbone.tokenizer import build_vocab_and_merges
    from dreambat_world.synthetic import VOCABULARY

    vocab, merges = build_vocab_and_merges([*BASE_WORDS, *VOCABULARY])
    assert sorted(vocab.values()) == list(range(512 + len(merges) + 2))  # no merge token repeats
    tok = build_clip_tokenizer(VOCABULARY)
    for word in VOCABULARY:
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids) == [word + "</w>"], word


def test_tokenizer_ids_are_the_same_in_every_process():
    import subprocess
    import sys

    code = ("import json; from dreambat.backbone.tokenizer import BASE_WORDS, build_vocab_and_merges;"
            "from dreambat_world.synthetic import VOCABULARY;"
            "print(json.dumps(list(build_vocab_and_merges([*BASE_WORDS, *VOCABULARY])[0].items())))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout
            for seed in (1, 2, 3)}
    assert len(runs) == 1 and len(json.loads(runs.pop())) > 512


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_clip_tokenizer(["striped"])
    tok.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a photo of sks striped star"
    assert loaded(text).input_ids == tok(text).input_ids
    assert loaded.model_max_length == 77


def test_attention_levels_and_vae_mid_attention_are_configurable():
    import dataclasses

    size = dataclasses.replace(TINY_SIZES["test"], unet_attention=(False, True), vae_mid_attention=False)
    parts = build_tiny_components(size)
    assert parts["unet"].config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert parts["unet"].config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D")
    assert parts["vae"].config.mid_block_add_attention is False
    default = build_tiny_components("test")["unet"].config
    assert default.down_block_types == ("CrossAttnDownBlock2D", "DownBlock2D")
    with pytest.raises(ConfigError, match="unet_attention has 3 entries"):
        build_tiny_components(dataclasses.replace(size, unet_attention=(True, True, False)))


def test_the_real_clip_tokenizer_built_offline_matches_open_clip_token_for_token():
    import random

    import open_clip

    from dreambat.backbone.tokenizer import build_real_clip_tokenizer
    from dreambat_world.synthetic import backbone_records

    tokenizer = build_real_clip_tokenizer()
    reference = open_clip.get_tokenizer("ViT-L-14")
    assert len(tokenizer) == 49408 and tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    captions = [r["caption"] for r in backbone_records(200, seed=3, size=8)]
    rng = random.Random(0)
    words = ["a", "photo", "of", "sks", "dog", "on", "the", "beach", "it's", "café", "3D", "New-York", "!!", "42%"]
    captions += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(100)]
    for caption in captions:
        ids = tokenizer(caption, max_length=77, truncation=True).input_ids
        expected = reference([caption])[0].tolist()
        assert ids == expected[: len(ids)] and expected[len(ids):].count(0) == 77 - len(ids), caption


def test_sd15_configs_have_the_released_parameter_counts():
    """The shapes alone, built on the meta device: no memory, no weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreambat.backbone.sd15 import SD15_PARAMETERS, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE

    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**SD15_UNET), "vae": AutoencoderKL(**SD15_VAE),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))}
    assert {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()} == SD15_PARAMETERS
