"""Sample grids: base model and LoRAs side by side, both layouts, and `dreambat grid`."""

import numpy as np
import pytest
from PIL import Image

from dreambat.cli import main
from dreambat.errors import ConfigError, ModelNotFoundError
from dreambat.eval.config import GenerationSettings, build_methods
from dreambat.eval.grids import GridConfig, layout_grid, render_grid

CELL, PAD, LABELS, HEADER = 96, 2, 160, 24  # dreambat.image_grid layout; 32 px images upscaled to 96


def _config(backbone, loras, names, **kwargs):
    return GridConfig(str(backbone), build_methods(loras, names), ["a sks star", "a red sks star"],
                      GenerationSettings(num_images=3, seed=7, num_inference_steps=1, batch_size=4), device="cpu",
                      **kwargs)


def test_prompts_x_seeds_and_methods_x_prompts(tiny_backbone, lora_dirs):
    grid, images = render_grid(_config(tiny_backbone, list(lora_dirs), ["a", "b"]))
    assert list(images) == ["base", "a", "b"]
    assert all(len(rows) == 2 and all(len(row) == 3 for row in rows) for rows in images.values())
    assert grid.size == (LABELS + 3 * (CELL + PAD) + PAD, HEADER + 6 * (CELL + PAD) + PAD)
    pixels = {m: np.asarray(images[m][0][0], dtype=int) for m in images}
    assert np.abs(pixels["base"] - pixels["a"]).max() > 0 and np.abs(pixels["a"] - pixels["b"]).max() > 0

    wide = layout_grid(images, ["a sks star", "a red sks star"], [7, 8, 9], "methods_x_prompts")
    assert wide.size == (LABELS + 6 * (CELL + PAD) + PAD, HEADER + 3 * (CELL + PAD) + PAD)

    # The LoRA is unloaded again: the base model after a LoRA draws the same images.
    _, again = render_grid(_config(tiny_backbone, [lora_dirs[0]], ["a"], cell_size=40))
    assert np.abs(np.asarray(again["base"][1][2], dtype=int) - np.asarray(images["base"][1][2], dtype=int)).max() <= 1


def test_grid_refuses_bad_input(tiny_backbone, lora_dirs, tmp_path):
    with pytest.raises(ModelNotFoundError, match="pytorch_lora_weights.safetensors"):
        _config(tiny_backbone, [tmp_path], ["x"]).check_files()
    with pytest.raises(ConfigError, match="one name per LoRA"):
        _config(tiny_backbone, list(lora_dirs), ["x"])
    with pytest.raises(ConfigError, match="--layout"):
        _config(tiny_backbone, [], None, layout="diagonal")


def test_dreambat_grid_command(tiny_backbone, lora_dirs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    common = ["grid", "--pretrained_model_name_or_path", str(tiny_backbone), "--prompt", "a sks star",
              "--num_images", "2", "--num_inference_steps", "1", "--device", "cpu"]
    assert main([*common, "--lora_dir", str(lora_dirs[0]), "--no_base", "--layout", "methods_x_prompts",
                 "--output", str(out)]) == 0
    assert Image.open(out).size == (LABELS + 2 * (CELL + PAD) + PAD, HEADER + 1 * (CELL + PAD) + PAD)
    assert main([*common, "--lora_dir", str(tmp_path / "missing"), "--output", str(tmp_path / "no.png")]) == 2
    assert "pytorch_lora_weights.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


def test_long_column_headers_wrap_instead_of_being_cut():
    from PIL import Image

    from dreambat.image_grid import CAPTION_LINE_HEIGHT, PADDING, image_grid

    label = "a photo of sks star on the beach with a red umbrella"
    grid = image_grid([[Image.new("RGB", (32, 32))]], column_labels=[label], cell_size=48)
    lines = -(-len(label) // (48 // 6))  # at least this many lines of 8 characters
    assert grid.height >= lines * CAPTION_LINE_HEIGHT + 48 + 2 * PADDING
