"""A run folder is a safe unit: reruns with other settings never mix, bad inputs are refused
before any model loads, and a refused run writes nothing."""

import json
import shutil

import pytest

from dreambat.albat.manifest import read_manifest
from dreambat.bat.pipeline import run_bat
from dreambat.cli import parse_run_config
from dreambat.data.shard_writer import write_shards
from dreambat.errors import ConfigError, DataError, DreambatError
from tests.bat.test_pipeline import _flags
from tests.conftest import REPO

SUBJECT = REPO / "assets" / "subject"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_backbone):
    """One finished ALBAT run (in-process, no validation), copied by each test."""
    from dreambat_world.synthetic import backbone_records

    root = tmp_path_factory.mktemp("run-folder")
    shard = root / "shard-00000.tar"
    write_shards(list(backbone_records(12, seed=1, size=32)), shard)
    out = root / "out"
    run_bat(parse_run_config(_flags(tiny_backbone, SUBJECT, out, str(shard), "--report_to", "none",
                                    validation=False)))
    return {"out": out, "shard": str(shard), "backbone": tiny_backbone}


def _copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    return out


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _no_model(monkeypatch):
    monkeypatch.setattr("dreambat.backbone.load.load_backbone", lambda *a, **k: pytest.fail("a model loaded"))


@pytest.mark.parametrize("change, named", [
    (["--learning_rate", "5e-3"], "learning_rate"),
    (["--instance_prompt", "a photo of sks dog"], "instance_prompt"),
    (["--num_score_timesteps", "3"], "num_score_timesteps"),
])
def test_a_rerun_with_other_settings_is_refused_before_any_work(finished, tmp_path, monkeypatch, change, named):
    out = _copy(finished, tmp_path)
    before = _snapshot(out)
    _no_model(monkeypatch)
    flags = _flags(finished["backbone"], SUBJECT, out, finished["shard"], "--report_to", "none", validation=False)
    flags += change  # later flags win
    with pytest.raises(ConfigError) as error:
        run_bat(parse_run_config(flags))
    message = str(error.value)
    assert named in message and "--overwrite_output_dir" in message and "new --output_dir" in message
    assert _snapshot(out) == before  # nothing written, dreambat_config.json included


def test_overwrite_output_dir_archives_the_earlier_run_and_starts_clean(finished, tmp_path):
    out = _copy(finished, tmp_path)
    old_weights = (out / "pytorch_lora_weights.safetensors").read_bytes()
    flags = _flags(finished["backbone"], SUBJECT, out, finished["shard"], "--report_to", "none",
                   "--learning_rate", "5e-3", "--overwrite_output_dir", validation=False)
    result = run_bat(parse_run_config(flags))
    assert result.report["stages"] == {"surrogate": "ran", "score": "ran", "select": "ran", "train": "ran"}
    (archived,) = (out / "archive").iterdir()
    assert (archived / "pytorch_lora_weights.safetensors").read_bytes() == old_weights
    assert {p.name for p in archived.iterdir()} >= {"surrogate", "selection.jsonl", "checkpoint-4"}
    assert json.loads((out / "dreambat_config.json").read_text())["train"]["learning_rate"] == 5e-3


def test_other_final_settings_reuse_the_scores_and_never_resume_the_old_checkpoints(finished, tmp_path, monkeypatch):
    out = _copy(finished, tmp_path)
    monkeypatch.setattr("dreambat.scoring.run._score", lambda *a, **k: pytest.fail("rescored"))
    flags = _flags(finished["backbone"], SUBJECT, out, finished["shard"], "--report_to", "none",
                   "--max_train_steps", "6", "--num_backbone_samples", "2", "--resume_from_checkpoint", "latest",
                   validation=False)
    result = run_bat(parse_run_config(flags))
    assert result.report["stages"]["surrogate"] == "reused" and result.report["stages"]["score"] == "reused"
    assert result.report["stages"]["train"] == "ran"  # not resumed from the old run's checkpoint-4
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    (archived,) = (out / "archive").iterdir()
    assert (archived / "checkpoint-4").is_dir()


def _bad_shards(tmp_path):
    (tmp_path / "zero.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_text("this is not a tar file\n" * 50)
    write_shards([{"key": f"bad{i}", "image": b"not an image", "caption": "x"} for i in range(3)],
                 tmp_path / "corrupt.tar")
    return {"zero.tar": "empty", "text.tar": "not a tar archive", "corrupt.tar": "3 corrupt image"}


@pytest.mark.parametrize("name", ["zero.tar", "text.tar", "corrupt.tar"])
def test_each_kind_of_bad_shard_is_refused_before_a_model_loads_and_writes_nothing(
        finished, tmp_path, monkeypatch, name):
    out = _copy(finished, tmp_path)
    problems = _bad_shards(tmp_path)
    before = _snapshot(out)
    _no_model(monkeypatch)
    flags = _flags(finished["backbone"], SUBJECT, out, str(tmp_path / name), "--report_to", "none",
                   "--overwrite_output_dir", validation=False)
    with pytest.raises(DataError) as error:
        run_bat(parse_run_config(flags))
    assert name in str(error.value) and problems[name] in str(error.value)
    assert _snapshot(out) == before  # not even --overwrite_output_dir moved anything


def test_a_failed_check_keeps_the_finished_runs_config(finished, tmp_path, monkeypatch):
    out = _copy(finished, tmp_path)
    before = _snapshot(out)
    _no_model(monkeypatch)
    flags = _flags(finished["backbone"], tmp_path / "no-such-photos", out, finished["shard"], "--report_to", "none",
                   validation=False)
    with pytest.raises(DreambatError):
        run_bat(parse_run_config(flags))
    assert _snapshot(out) == before


def test_a_malformed_selection_manifest_is_the_users_input_error(finished, tmp_path, monkeypatch):
    bad = tmp_path / "selection.jsonl"
    bad.write_text('{"index": 0, "key": "a"}\nnot json at all\n{"index": 2}\n')
    _no_model(monkeypatch)
    flags = _flags(finished["backbone"], SUBJECT, tmp_path / "new", finished["shard"], "--report_to", "none",
                   "--selection_manifest", str(bad), validation=False)
    flags.remove("--backbone_shards"), flags.remove(finished["shard"])
    with pytest.raises(ConfigError) as error:
        run_bat(parse_run_config(flags))
    assert "is not a selection manifest" in str(error.value) and "--overwrite_manifest" not in str(error.value)
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text("".join(
        r.to_json().replace(f'"score": {r.score}', '"score": null') + "\n"
        for r in read_manifest(finished["out"] / "selection.jsonl")))
    flags[flags.index(str(bad))] = str(unscored)
    with pytest.raises(ConfigError, match="holds no scores"):
        run_bat(parse_run_config(flags))
