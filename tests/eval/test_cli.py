"""`dreambat eval` and eval/dreambench.py: flags to config, one tiny run, errors as exit code 2."""

import runpy

import pytest
import torch

from dreambat.cli import main
from tests.conftest import REPO


def _flags(backbone, evaluators, subject, out):
    return ["eval", "--pretrained_model_name_or_path", str(backbone), "--subject", f"{subject}=star",
            "--num_prompts", "1", "--num_images", "1", "--num_inference_steps", "1", "--device", "cpu",
            "--dino_model", str(evaluators.dino_model), "--clip_model", str(evaluators.clip_model),
            "--clip_pretrained", str(evaluators.clip_pretrained), "--output_dir", str(out), "--no_progress"]


def test_dreambat_eval_runs_and_prints_the_table(tiny_backbone, tiny_evaluators, subject_dir, lora_dirs, tmp_path,
                                                 capsys):
    flags = _flags(tiny_backbone, tiny_evaluators, subject_dir, tmp_path / "out")
    assert main([*flags, "--lora_dir", str(lora_dirs[0]), "--method_name", "bat", "--metrics", "clip_t"]) == 0
    printed = capsys.readouterr().out
    assert "| method | CLIP-T | PRES ↓ | DIV |" in printed and "| bat |" in printed
    assert "Generated 18 image(s)" in printed  # per method: 1 DreamBench image, 4 + 4 for PRES / DIV
    assert (tmp_path / "out/bat/subject/00_0.png").is_file() and (tmp_path / "out/scores.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "dino", "fid"], "Unknown metric"),
    (["--lora_dir", "/no/such/lora"], "does not exist"),
    (["--lora_dir", "a", "--lora_dir", "b", "--method_name", "x"], "one name per LoRA"),
    (["--subject", "folder-without-class"], "FOLDER=CLASS"),
    (["--num_prior_images", "-2"], "--num_prior_images must be in"),
    (["--class_prompt_template", "a photo of a {0}"], "--class_prompt_template"),
])
def test_dreambat_eval_errors(tiny_backbone, tiny_evaluators, subject_dir, tmp_path, capsys, extra, message):
    assert main([*_flags(tiny_backbone, tiny_evaluators, subject_dir, tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.png"))  # refused before anything was generated


def test_entry_point_scripts_parse_their_flags(capsys):
    for script in ("dreambench.py", "sample_grid.py"):
        entry = runpy.run_path(str(REPO / "eval" / script))
        with pytest.raises(SystemExit) as exit_info:
            entry["main"](["--help"])
        assert exit_info.value.code == 0
    assert "--lora_dir" in capsys.readouterr().out


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_a_run_resolves_its_backbone_once(tiny_backbone, tiny_evaluators, subject_dir, lora_dirs, tmp_path,
                                          monkeypatch):
    from dreambat.backbone import load
    from dreambat.eval import grids

    calls = _count_calls(monkeypatch, load, "resolve_backbone")
    flags = _flags(tiny_backbone, tiny_evaluators, subject_dir, tmp_path / "out")
    assert main([*flags, "--no_base", "--lora_dir", str(lora_dirs[0]), "--metrics", "clip_t"]) == 0
    assert calls == [(str(tiny_backbone), None)]

    calls = _count_calls(monkeypatch, grids, "resolve_backbone")
    assert main(["grid", "--pretrained_model_name_or_path", str(tiny_backbone), "--prompt", "a sks star",
                 "--num_images", "1", "--num_inference_steps", "1", "--device", "cpu",
                 "--output", str(tmp_path / "grid.png")]) == 0
    assert len(calls) == 1


def test_dreambat_eval_and_grid_on_an_sdxl_lora(tiny_sdxl_backbone, tiny_evaluators, subject_dir, tmp_path, capsys):
    from dreambat.backbone.sdxl import build_tiny_sdxl_components
    from dreambat.lora import add_unet_lora, save_lora

    torch.manual_seed(1)
    unet = build_tiny_sdxl_components()["unet"]
    add_unet_lora(unet, rank=2, init_lora_weights=False)
    lora = save_lora(tmp_path / "lora", unet).parent
    flags = _flags(tiny_sdxl_backbone, tiny_evaluators, subject_dir, tmp_path / "out")
    assert main([*flags, "--lora_dir", str(lora), "--method_name", "bat", "--metrics", "dino", "clip_t"]) == 0
    assert "| bat |" in capsys.readouterr().out
    assert (tmp_path / "out/bat/subject/00_0.png").is_file()
    assert main(["grid", "--pretrained_model_name_or_path", str(tiny_sdxl_backbone), "--prompt", "a sks star",
                 "--lora_dir", str(lora), "--num_images", "1", "--num_inference_steps", "1",
                 "--output", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
