"""The full BAT pipeline on the tiny backbone: launches, outputs, reuse, bad input, 2 processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dreambat.albat.manifest import read_manifest
from dreambat.bat.pipeline import check_bat_inputs, run_bat
from dreambat.cli import parse_run_config
from dreambat.data.shard_writer import write_shards
from dreambat.errors import DataError, ShardNotFoundError
from dreambat_world.synthetic import backbone_records
from tests.conftest import REPO

N_CANDIDATES = 16
PROMPT = "a photo of sks star"


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    records = list(backbone_records(N_CANDIDATES, seed=1, size=32))
    records.insert(5, {"key": "corrupt", "image": b"not a jpeg", "caption": "broken"})
    path = tmp_path_factory.mktemp("bat-shards") / "shard-00000.tar"
    write_shards(records, path)
    return str(path)


def _flags(backbone, subject, out, shard, *extra, validation=True):
    flags = [
        "--pretrained_model_name_or_path", str(backbone), "--instance_data_dir", str(subject),
        "--instance_prompt", PROMPT, "--output_dir", str(out), "--seed", "0",
        "--train_batch_size", "2", "--max_train_steps", "4", "--learning_rate", "1e-3",
        "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
        "--backbone_shards", shard, "--surrogate_steps", "3", "--num_score_timesteps", "2",
        "--score_batch_size", "4", "--reference_draws", "2", *extra,
    ]
    if validation:
        flags += ["--validation_prompt", PROMPT, "--num_validation_images", "1", "--num_inference_steps", "2"]
    return flags


def _launch(flags, *, processes=1, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(processes)]
    launcher += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    done = subprocess.run(launcher + ["train_dreambooth_bat.py", *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _check_outputs(out, *, selection):
    names = {p.name for p in out.iterdir()}
    for name in ("pytorch_lora_weights.safetensors", "bat_report.json", "dreambat_config.json",
                 "README.md", "validation_grid.png", "logs"):
        assert name in names, f"{name} missing from {sorted(names)}"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    assert list((out / "logs").rglob("events.out.tfevents*"))
    report = json.loads((out / "bat_report.json").read_text())
    assert report["settings"]["selection"]["selection"] == selection
    assert json.loads((out / "dreambat_config.json").read_text()) == report["settings"]
    assert set(report["timings"]) >= {"train"}
    counts = report["counts"]["training_samples"]
    assert counts["subject"] + counts.get("backbone", 0) == 4 * 2
    card = (out / "README.md").read_text()
    assert "Backbone Augmented Training" in card
    if selection == "none":
        assert "selection.jsonl" not in names
        assert counts.get("backbone", 0) == 0
        return report, []
    records = read_manifest(out / "selection.jsonl")
    assert [r.index for r in records] == list(range(N_CANDIDATES))
    assert report["counts"]["selected"] == sum(bool(r.selected) for r in records) > 0
    assert counts["backbone"] > 0
    return report, records


@pytest.fixture(scope="module")
def albat_run(tmp_path_factory, tiny_backbone, shard):
    """One ALBAT run through ``accelerate launch`` (reused by several tests)."""
    root = tmp_path_factory.mktemp("bat-albat")
    subject = REPO / "assets" / "subject"
    out = root / "out"
    done = _launch(_flags(tiny_backbone, subject, out, shard, "--augmentation_ratio", "0.5"))
    return {"out": out, "stdout": done.stdout, "backbone": tiny_backbone, "subject": subject}


def test_albat_run_writes_every_output(albat_run):
    report, records = _check_outputs(albat_run["out"], selection="albat")
    assert all(r.selected == (r.score > 0) for r in records)
    assert report["counts"]["skipped_corrupt_image"] == 1
    assert report["stages"] == {"surrogate": "ran", "score": "ran", "select": "ran", "train": "ran"}
    assert report["gamma"]["requested"] == 0.5
    assert report["shards"]["given"] == 1 and report["shards"]["empty_shards"] == []
    assert (albat_run["out"] / "surrogate" / "pytorch_lora_weights.safetensors").is_file()
    assert "pytorch_lora_weights.safetensors" in albat_run["stdout"]
    # The ranking's split-half reliability reaches the report and the model card.
    assert report["reliability"]["candidates"] == len(records) and "full_run" in report["reliability"]
    assert "Ranking reliability: estimated test-retest Spearman" in (albat_run["out"] / "README.md").read_text()


def test_lora_loads_into_pipeline_and_changes_output(albat_run):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(albat_run["backbone"]), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def render():
        generator = torch.Generator().manual_seed(0)
        return pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0]

    before = render()
    pipe.load_lora_weights(str(albat_run["out"]))
    assert np.abs(render() - before).max() > 1e-4


@pytest.mark.parametrize("selection, extra", [("random", ["--num_backbone_samples", "4"]), ("none", [])])
def test_baselines_through_accelerate_launch(tmp_path, tiny_backbone, shard, selection, extra):
    flags = _flags(tiny_backbone, REPO / "assets" / "subject", tmp_path / "out", shard, "--selection", selection, *extra)
    _launch(flags)
    report, records = _check_outputs(tmp_path / "out", selection=selection)
    assert report["stages"]["surrogate"] == "skipped"
    if selection == "random":
        assert sum(bool(r.selected) for r in records) == 4
        assert all(r.score is None for r in records)


def test_rerun_reuses_surrogate_and_manifest(albat_run, tmp_path, shard, monkeypatch):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(albat_run["out"], out)
    before = (out / "selection.jsonl").read_text()
    settings = parse_run_config(_flags(albat_run["backbone"], albat_run["subject"], out, shard,
                                         "--augmentation_ratio", "0.5", "--report_to", "none"))

    def no_scoring(*args, **kwargs):
        raise AssertionError("the finished manifest was scored again")

    monkeypatch.setattr("dreambat.scoring.run._score", no_scoring)
    result = run_bat(settings)
    assert result.report["stages"]["surrogate"] == "reused"
    assert result.report["stages"]["score"] == "reused"
    assert (out / "selection.jsonl").read_text() == before


def test_changed_selection_rule_reselects_without_rescoring(albat_run, tmp_path, shard, monkeypatch):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(albat_run["out"], out)
    monkeypatch.setattr("dreambat.scoring.run._score", lambda *a, **k: pytest.fail("rescored"))
    settings = parse_run_config(_flags(albat_run["backbone"], albat_run["subject"], out, shard,
                                         "--num_backbone_samples", "2", "--report_to", "none",
                                         "--max_train_steps", "2"))
    result = run_bat(settings)
    records = read_manifest(out / "selection.jsonl")
    top = sorted((r for r in records if r.score is not None), key=lambda r: -r.score)[:2]
    assert {r.index for r in records if r.selected} == {r.index for r in top if r.score > 0}
    assert result.report["counts"]["selected"] == len({r.index for r in top if r.score > 0})


def test_missing_shard_is_reported_before_any_model_loads(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setattr("dreambat.backbone.load.load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    settings = parse_run_config(_flags(tiny_backbone, REPO / "assets" / "subject", tmp_path / "out",
                                         str(tmp_path / "missing-{00000..00001}.tar")))
    with pytest.raises(ShardNotFoundError):
        run_bat(settings)


def test_strict_shards_refuses_an_empty_shard_before_any_model_loads(tmp_path, tiny_backbone, shard, monkeypatch):
    monkeypatch.setattr("dreambat.backbone.load.load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "shard-00000.tar").write_bytes(open(shard, "rb").read())
    write_shards([], pool / "shard-00001.tar")  # every download of this shard failed
    flags = _flags(tiny_backbone, REPO / "assets" / "subject", tmp_path / "out", str(pool / "shard-{00000..00001}.tar"))
    settings = parse_run_config(flags)
    checked = check_bat_inputs(settings)  # skipped by default ...
    assert checked.shards.empty == {str(pool / "shard-00001.tar"): "holds no samples"}
    with pytest.raises(DataError, match="(?s)--strict_shards: 1 of 2 backbone shard.*shard-00001.tar"):
        run_bat(parse_run_config(flags + ["--strict_shards"]))  # ... refused with the flag
    assert not (tmp_path / "out").exists()


def test_two_processes_give_the_single_process_manifest(albat_run, tmp_path, shard):
    out = tmp_path / "out"
    surrogate = albat_run["out"] / "surrogate"
    _launch(_flags(albat_run["backbone"], albat_run["subject"], out, shard, "--surrogate_lora", str(surrogate),
                   "--max_train_steps", "2", "--report_to", "none", validation=False), processes=2)
    single = read_manifest(albat_run["out"] / "selection.jsonl")
    double = read_manifest(out / "selection.jsonl")
    assert [(r.index, r.key, r.selected) for r in double] == [(r.index, r.key, r.selected) for r in single]
    assert [r.score for r in double] == [r.score for r in single]  # bit for bit: fixed batch shapes
    report = json.loads((out / "bat_report.json").read_text())
    assert report["num_processes"] == 2 and report["stages"]["surrogate"] == "given"


def test_prior_preservation_and_text_encoder_lora(tmp_path, tiny_backbone, shard):
    out = tmp_path / "out"
    settings = parse_run_config(_flags(
        tiny_backbone, REPO / "assets" / "subject", out, shard, "--selection", "random",
        "--num_backbone_samples", "3", "--with_prior_preservation", "--class_data_dir", str(tmp_path / "class"),
        "--class_prompt", "a photo of a star", "--num_class_images", "2", "--train_text_encoder",
        "--report_to", "none",
    ))
    run_bat(settings)
    assert len(list((tmp_path / "class").iterdir())) == 2
    keys = load_file(out / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
