"""BAT flags: parsed once, invalid combinations refused before anything loads."""

import pytest

from dreambat.bat.config import DEFAULT_GAMMA, BatSettings
from dreambat.cli import parse_run_config

REQUIRED = [
    "--pretrained_model_name_or_path", "does/not/matter",
    "--instance_data_dir", "subject", "--instance_prompt", "a photo of sks dog",
]
SHARDS = ["--backbone_shards", "laion/{00000..00003}.tar"]


def test_bat_flags_parse_next_to_diffusers_flags():
    settings = parse_run_config(REQUIRED + SHARDS + [
        "--max_train_steps", "400", "--rank", "8", "--selection", "albat", "--surrogate_steps", "100",
        "--num_score_timesteps", "4", "--curvature", "datainf", "--damping", "0.5",
        "--num_backbone_samples", "200", "--augmentation_ratio", "0.9", "--candidate_ratio", "0.5",
    ])
    assert settings.train.max_train_steps == 400 and settings.train.rank == 8
    assert settings.pool.backbone_shards == ["laion/{00000..00003}.tar"]
    scoring = settings.scoring
    assert (settings.bat.surrogate_steps, scoring.num_score_timesteps, scoring.curvature) == (100, 4, "datainf")
    assert settings.gamma == 0.9 and settings.pool.candidate_ratio == 0.5
    rule = settings.selection.rule(seed=0)
    assert (type(rule).__name__, rule.threshold, rule.num_samples, rule.fraction, rule.force) == (
        "AlbatSelection", None, 200, None, False)


def test_gamma_defaults():
    required = {"pretrained_model_name_or_path": "sd", "instance_data_dir": "d", "instance_prompt": "a sks dog"}
    assert BatSettings.from_flags(**required, backbone_shards=["x.tar"]).gamma == DEFAULT_GAMMA
    assert BatSettings.from_flags(**required, selection="none").gamma == 0.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (SHARDS + ["--augmentation_ratio", "1.0"], "augmentation_ratio"),
        (SHARDS + ["--augmentation_ratio", "-0.1"], "augmentation_ratio"),
        ([], "needs backbone candidates"),
        (["--selection", "random"], "needs backbone candidates"),
        (SHARDS + ["--selection", "random"], "needs a count"),
        (SHARDS + ["--selection", "random", "--score_threshold", "0.1"], "does not take --score_threshold"),
        (["--selection", "none", "--augmentation_ratio", "0.5"], "no effect"),
        (SHARDS + ["--num_backbone_samples", "5", "--backbone_fraction", "0.5"], "at most one"),
        (SHARDS + ["--surrogate_steps", "0"], "surrogate_steps"),
        (SHARDS + ["--num_score_timesteps", "0"], "num_score_timesteps"),
        (SHARDS + ["--candidate_ratio", "0"], "candidate_ratio"),
        (["--selection_manifest", "missing/selection.jsonl"], "does not exist"),
        (["--selection", "none", "--surrogate_lora", "x"], "only used by"),
        (["--selection", "none", "--with_prior_preservation"], "class"),
    ],
)
def test_invalid_combinations_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_run_config(REQUIRED + flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
