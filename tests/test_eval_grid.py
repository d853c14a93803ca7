import subprocess
import sys

from PIL import Image

from dreambat.backbone.tiny import build_tiny_components
from dreambat.lora import add_unet_lora, save_lora
from tests.conftest import REPO


def _run(*args):
    return subprocess.run([sys.executable, "eval/sample_grid.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_grid_has_one_cell_per_prompt_seed_and_model(tiny_backbone, tmp_path):
    unet = build_tiny_components("test")["unet"]
    add_unet_lora(unet, rank=2, init_lora_weights=False)
    save_lora(tmp_path / "lora", unet)
    out = tmp_path / "grid.png"
    proc = _run("--pretrained_model_name_or_path", tiny_backbone, "--lora_dir", tmp_path / "lora",
                "--prompt", "a red star", "--prompt", "a blue circle", "--num_images", "3",
                "--num_inference_steps", "2", "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid = Image.open(out)
    cell, pad, label_width, header = 96, 2, 160, 24  # grid.py layout for 32 px images upscaled to 96
    assert grid.size == (label_width + 3 * (cell + pad) + pad, header + 4 * (cell + pad) + pad)


def test_missing_lora_is_reported_before_rendering(tiny_backbone, tmp_path):
    proc = _run("--pretrained_model_name_or_path", tiny_backbone, "--lora_dir", tmp_path / "nothing",
                "--prompt", "x", "--output", tmp_path / "g.png")
    assert proc.returncode == 2 and "pytorch_lora_weights.safetensors" in proc.stderr
    assert not (tmp_path / "g.png").exists()
