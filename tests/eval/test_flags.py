"""`dreambat eval` / `dreambat grid` command lines -> setting groups -> configs (no model involved)."""

import dataclasses
from pathlib import Path

import pytest

from dreambat.cli import main
from dreambat.parsing import HelpFormatter
from dreambat.errors import ConfigError
from dreambat.eval.cli import DREAMBENCH, GRID, parse_dreambench_settings, parse_grid_settings
from dreambat.eval.config import (
    DreamBenchConfig, DreamBenchSubject, EncoderSettings, GenerationSettings, Method, PriorSettings, SamplingSettings,
)
from dreambat.eval.constants import (
    DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, DEFAULT_DINO_MODEL, DEFAULT_EVAL_BATCH_SIZE, GRID_INFERENCE_STEPS,
    METRIC_NAMES,
)
from dreambat.eval.flags import DreamBenchSettings
from dreambat.eval.grids import GridConfig
from dreambat.scoring.config import SelectionConfig


def test_a_full_eval_command_line_sets_every_field(tmp_path):
    (tmp_path / "dreambench" / "can").mkdir(parents=True)
    argv = [
        "--pretrained_model_name_or_path", "org/backbone", "--revision", "v1",
        "--lora_dir", f"{tmp_path}/runs/dreambooth", "--method_name", "dreambooth",
        "--lora_dir", f"{tmp_path}/runs/bat", "--method_name", "bat", "--no_base",
        "--device", "cpu", "--dtype", "bfloat16",
        "--num_images", "3", "--seed", "7", "--num_inference_steps", "20", "--guidance_scale", "5.5",
        "--resolution", "256", "--scheduler", "ddim", "--batch_size", "2", "--unique_token", "zwx",
        "--num_prompts", "5", "--num_prior_images", "6", "--class_prompt_template", "a {} in a photo",
        "--subject", f"{tmp_path}/dog2=dog", "--subject", f"{tmp_path}/bear=stuffed animal",
        "--subject", f"{tmp_path}/robo=robot:live",
        "--dreambench_dir", f"{tmp_path}/dreambench", "--dreambench_subject", "can",
        "--metrics", "dino", "clip_t",
        "--dino_model", "my/dino", "--clip_model", "ViT-L-14", "--clip_pretrained", "clip.pt", "--eval_batch_size", "8",
        "--output_dir", f"{tmp_path}/out", "--no_progress",
    ]
    settings = parse_dreambench_settings(argv)
    assert settings.config == DreamBenchConfig(
        pretrained_model_name_or_path="org/backbone",
        methods=[Method("dreambooth", tmp_path / "runs/dreambooth"), Method("bat", tmp_path / "runs/bat")],
        subjects=[DreamBenchSubject("dog2", tmp_path / "dog2", "dog", live=True),
                  DreamBenchSubject("bear", tmp_path / "bear", "stuffed animal", live=False),
                  DreamBenchSubject("robo", tmp_path / "robo", "robot", live=True),
                  DreamBenchSubject("can", tmp_path / "dreambench/can", "can", live=False)],
        output_dir=tmp_path / "out",
        generation=GenerationSettings(num_images=3, seed=7, num_inference_steps=20, guidance_scale=5.5,
                                      resolution=256, scheduler="ddim", batch_size=2, unique_token="zwx",
                                      num_prompts=5),
        encoders=EncoderSettings("my/dino", "ViT-L-14", "clip.pt", batch_size=8),
        metrics=("dino", "clip_t"),
        prompts_file=None,
        device="cpu",
        dtype="bfloat16",
        revision="v1",
        prior=PriorSettings(num_prior_images=6, class_prompt_template="a {} in a photo"),
    )
    assert settings.output.no_progress is True
    # the flags as typed, next to what the config made of them
    assert settings.models.lora_dir == [f"{tmp_path}/runs/dreambooth", f"{tmp_path}/runs/bat"]
    assert settings.models.method_name == ["dreambooth", "bat"]
    assert settings.subjects.dreambench_subject == ["can"]


def test_eval_defaults_come_from_the_settings_and_constants(tmp_path):
    settings = parse_dreambench_settings(["--pretrained_model_name_or_path", "sd", "--subject", f"{tmp_path}/s=dog"])
    config = settings.config
    assert [m.name for m in config.methods] == ["base"] and config.metrics == METRIC_NAMES
    assert config.generation == GenerationSettings() and config.generation.num_inference_steps == 50
    assert config.prior == PriorSettings() and config.prior.num_prior_images == 4
    assert config.encoders == EncoderSettings(DEFAULT_DINO_MODEL, DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED,
                                              DEFAULT_EVAL_BATCH_SIZE)
    defaults = {f.name: f.default for f in dataclasses.fields(DreamBenchConfig) if f.name in ("device", "dtype")}
    assert (config.device, config.dtype, config.revision, config.prompts_file) == (
        defaults["device"], defaults["dtype"], None, None)
    assert config.output_dir == Path("dreambench_results") and settings.output.no_progress is False
    # `dreambat score --selection clip` reads the same CLIP defaults
    assert (SelectionConfig().clip_model, SelectionConfig().clip_pretrained) == (DEFAULT_CLIP_MODEL,
                                                                                DEFAULT_CLIP_PRETRAINED)


def test_a_grid_command_line_sets_every_field(tmp_path):
    settings = parse_grid_settings([
        "--pretrained_model_name_or_path", "sd", "--prompt", "a sks star", "--prompt", "a red sks star",
        "--lora_dir", f"{tmp_path}/a", "--lora_dir", f"{tmp_path}/b", "--method_name", "one", "--method_name", "two",
        "--seed", "3", "--layout", "methods_x_prompts", "--cell_size", "64", "--output", "g.png",
    ])
    assert settings.config == GridConfig(
        "sd", [Method("base"), Method("one", tmp_path / "a"), Method("two", tmp_path / "b")],
        ["a sks star", "a red sks star"], SamplingSettings(seed=3, num_inference_steps=GRID_INFERENCE_STEPS),
        layout="methods_x_prompts", cell_size=64,
    )
    assert settings.grid.output == "g.png"
    assert GRID_INFERENCE_STEPS != SamplingSettings().num_inference_steps  # the grid's own default


@pytest.mark.parametrize("extra, message", [
    (["--lora_dir", "a", "b"], "unrecognized arguments: b"),  # one value per --lora_dir, as with append
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--scheduler", "lms"], "invalid choice: 'lms'"),
    (["--num_images", "two"], "invalid int value"),
    (["--dreambench_subject", "can"], "--dreambench_subject picks from --dreambench_dir"),
    (["--metrics", "fid"], "Unknown metric"),
    (["--num_prior_images", "-1"], "--num_prior_images must be in"),
    (["--class_prompt_template", "a photo of a dog"], "--class_prompt_template"),
])
def test_bad_eval_flags_exit_2_with_the_reason(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_dreambench_settings(["--pretrained_model_name_or_path", "sd", "--subject", f"{tmp_path}/s=dog", *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_refused_values_are_exit_code_2_from_the_command(tmp_path, capsys):
    argv = ["eval", "--pretrained_model_name_or_path", "sd", "--subject", f"{tmp_path}/s=dog"]
    assert main([*argv, "--dreambench_subject", "can"]) == 2
    assert "dreambat eval: error: --dreambench_subject" in capsys.readouterr().err
    assert main(["grid", "--pretrained_model_name_or_path", "sd", "--prompt", " "]) == 2
    assert "non-empty --prompt" in capsys.readouterr().err


@pytest.mark.parametrize("command", [DREAMBENCH, GRID], ids=["eval", "grid"])
def test_help_lists_every_flag_with_help_and_default(command):
    parser = command.parser("prog")
    text = parser.format_help()
    flags = [f.name for group in command.settings.GROUPS for f in dataclasses.fields(group) if f.init]
    assert flags and all(f"--{name}" in text for name in flags)
    formatter = HelpFormatter("prog")
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        assert action.required or "(default" in formatter._get_help_string(action), action.dest
    if command is DREAMBENCH:
        assert "--method_name dreambooth --lora_dir runs/bat" in text  # the example epilog, as written


def test_settings_from_python_use_the_flag_names(tmp_path):
    settings = DreamBenchSettings.from_flags(pretrained_model_name_or_path="sd", subject=[f"{tmp_path}/s=cat"],
                                             lora_dir=[str(tmp_path / "run")], metrics=["clip_i"])
    assert [m.name for m in settings.config.methods] == ["base", "run"] and settings.config.metrics == ("clip_i",)
    with pytest.raises(ConfigError, match="Unknown setting"):
        DreamBenchSettings.from_flags(pretrained_model_name_or_path="sd", methods=[])
