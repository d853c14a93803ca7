"""BAT on a Stable Diffusion XL backbone (the tiny 'test-sdxl'): the same end-to-end, LoRA-loading,
resume and two-process checks as on SD, plus SDXL's conditioning against diffusers' own."""

import json
import signal

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from dreambat import preemption
from dreambat.albat.manifest import read_manifest
from dreambat.backbone.load import load_backbone
from dreambat.bat.pipeline import run_bat
from dreambat.cli import parse_run_config
from dreambat.diffusion import unet_conditioning
from dreambat.errors import ConfigError
from tests.bat.test_pipeline import PROMPT, _check_outputs, _flags, _launch, shard  # noqa: F401 (fixture)
from tests.conftest import REPO
from tests.runs import stop_points
from tests.runs import test_interruptions as stops

SUBJECT = REPO / "assets" / "subject"


def _assert_loaded_unchanged(saved: dict, prefix: str, model) -> None:
    """Every ``prefix.*`` matrix of a saved diffusers-format LoRA is in ``model`` as peft holds it, unchanged:
    the file's ``<module>.lora.down|up.weight`` (UNet) or ``<module>.lora_linear_layer.down|up.weight``
    (text encoders) is peft's ``<module>.lora_A|B.<adapter>.weight``; none dropped, none extra."""
    loaded = {name: p for name, p in model.named_parameters() if "lora_" in name}
    own = {k: v for k, v in saved.items() if k.startswith(prefix + ".")}
    assert len(loaded) == len(own) > 0, prefix
    for key, value in own.items():
        module, layer, direction = key.removeprefix(prefix + ".").removesuffix(".weight").rsplit(".", 2)
        assert layer in ("lora", "lora_linear_layer"), key
        kind = {"down": "lora_A", "up": "lora_B"}[direction]
        [match] = [p for name, p in loaded.items() if name.startswith(f"{module}.{kind}.")]
        assert torch.equal(match.detach(), value), key


def test_conditioning_equals_the_sdxl_pipelines_own(tiny_sdxl_backbone):
    """Both encoders' penultimate states side by side, the second's pooled projection, and the time
    ids: what ``StableDiffusionXLPipeline`` feeds its UNet for the same prompts and sizes."""
    backbone = load_backbone(str(tiny_sdxl_backbone))
    pipe = StableDiffusionXLPipeline(vae=backbone.vae, text_encoder=backbone.text_encoder,
                                     text_encoder_2=backbone.text_encoder_2, tokenizer=backbone.tokenizer,
                                     tokenizer_2=backbone.tokenizer_2, unet=backbone.unet,
                                     scheduler=backbone.noise_scheduler, add_watermarker=False)
    prompts = ["a photo of sks star", "a red circle"]
    with torch.no_grad():
        ours = unet_conditioning(backbone, prompts, size=(32, 24), crop_top_left=(3, 5))
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    time_ids = pipe._get_add_time_ids((32, 24), (3, 5), (32, 24), dtype=embeds.dtype,
                                      text_encoder_projection_dim=backbone.text_encoder_2.config.projection_dim)
    assert ours["encoder_hidden_states"].shape == (2, 77, 32 + 48)
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours["added_cond_kwargs"]["text_embeds"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(ours["added_cond_kwargs"]["time_ids"], time_ids.repeat(2, 1), rtol=0, atol=0)
    assert ours["added_cond_kwargs"]["time_ids"][0].tolist() == [32, 24, 3, 5, 32, 24]


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory, tiny_sdxl_backbone, shard):  # noqa: F811
    out = tmp_path_factory.mktemp("bat-sdxl") / "out"
    done = _launch(_flags(tiny_sdxl_backbone, SUBJECT, out, shard, "--augmentation_ratio", "0.5"))
    return {"out": out, "stdout": done.stdout, "backbone": tiny_sdxl_backbone}


def test_sdxl_run_writes_every_output(sdxl_run):
    report, records = _check_outputs(sdxl_run["out"], selection="albat")
    assert report["stages"] == {"surrogate": "ran", "score": "ran", "select": "ran", "train": "ran"}
    assert all(r.score is not None and np.isfinite(r.score) for r in records)
    card = (sdxl_run["out"] / "README.md").read_text()
    assert "StableDiffusionXLPipeline.from_pretrained" in card and "stable-diffusion-xl" in card


def test_sdxl_lora_loads_into_the_sdxl_pipeline_with_the_trained_values(sdxl_run):
    """``StableDiffusionXLPipeline.load_lora_weights(output_dir)`` puts every saved LoRA matrix into
    the UNet unchanged (no layer dropped, no scale applied), and the output moves."""
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_run["backbone"]), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    height=32, width=32, output_type="np").images[0]

    before = render()
    pipe.load_lora_weights(str(sdxl_run["out"]))
    saved = load_file(sdxl_run["out"] / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("unet.") for k in saved)
    _assert_loaded_unchanged(saved, "unet", pipe.unet)
    assert np.abs(render() - before).max() > 1e-4


def test_sdxl_two_processes_give_the_single_process_manifest(sdxl_run, tmp_path, shard):  # noqa: F811
    out = tmp_path / "out"
    _launch(_flags(sdxl_run["backbone"], SUBJECT, out, shard, "--surrogate_lora", str(sdxl_run["out"] / "surrogate"),
                   "--max_train_steps", "2", "--report_to", "none", validation=False), processes=2)
    single = read_manifest(sdxl_run["out"] / "selection.jsonl")
    double = read_manifest(out / "selection.jsonl")
    assert [(r.index, r.key, r.score, r.selected) for r in double] == [(r.index, r.key, r.score, r.selected)
                                                                       for r in single]


@pytest.fixture(scope="module")
def sdxl_uninterrupted(tmp_path_factory, tiny_sdxl_backbone, shard):  # noqa: F811
    out = tmp_path_factory.mktemp("sdxl-stop-reference") / "out"
    run_bat(parse_run_config(stops._flags(tiny_sdxl_backbone, out, shard)))
    return stops._outputs(out)


@pytest.mark.parametrize("point", ["surrogate", "score", "train"])
def test_sdxl_run_stopped_then_rerun_gives_the_uninterrupted_outputs(
        point, tmp_path, tiny_sdxl_backbone, shard, sdxl_uninterrupted, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    settings = parse_run_config(stops._flags(tiny_sdxl_backbone, out, shard))
    with monkeypatch.context() as patch:
        stop_points.install(point, signal.SIGTERM, patch.setattr)
        with preemption.graceful_stop(), pytest.raises(preemption.Preempted):
            run_bat(settings)
    run_bat(settings)
    stops._assert_clean(out)
    stops._assert_stages(out, point)
    stops._assert_same(stops._outputs(out), sdxl_uninterrupted)


def test_pivotal_tuning_on_sdxl_is_refused_before_any_model_loads(tmp_path, tiny_sdxl_backbone, shard, monkeypatch):  # noqa: F811
    monkeypatch.setattr("dreambat.backbone.load.load_backbone", lambda *a, **k: pytest.fail("a model loaded"))
    monkeypatch.setattr("dreambat.training.dreambooth.load_backbone", lambda *a, **k: pytest.fail("a model loaded"))
    settings = parse_run_config(_flags(tiny_sdxl_backbone, SUBJECT, tmp_path / "out", shard,
                                       "--train_text_encoder_ti", "--token_abstraction", "sks"))
    with pytest.raises(ConfigError, match="--train_text_encoder_ti is not supported on SDXL"):
        run_bat(settings)
    assert not (tmp_path / "out").exists()


def test_text_encoder_loras_on_both_sdxl_encoders_train_score_and_load(tmp_path, tiny_sdxl_backbone, shard):  # noqa: F811
    """--train_text_encoder on SDXL: LoRAs on both encoders, in the surrogate ALBAT scores with (its
    blocks span the UNet and both encoders), in the final file under diffusers' SDXL prefixes, loaded
    by StableDiffusionXLPipeline with every matrix unchanged; a resumed run ends where an
    uninterrupted one does."""
    out = tmp_path / "out"
    flags = _flags(tiny_sdxl_backbone, SUBJECT, out, shard, "--train_text_encoder", "--augmentation_ratio", "0.5")
    run_bat(parse_run_config(flags))
    report, _ = _check_outputs(out, selection="albat")
    # ALBAT differentiated the surrogate's LoRA on all three models (block names: model index first)
    assert {name.split(".")[0] for name in report["curvature"]["blocks"]} == {"0", "1", "2"}
    for folder in (out, out / "surrogate", out / "checkpoint-4"):
        keys = load_file(folder / "pytorch_lora_weights.safetensors").keys()
        assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}, folder
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_backbone), add_watermarker=False)
    pipe.load_lora_weights(str(out))
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    for prefix in ("unet", "text_encoder", "text_encoder_2"):
        _assert_loaded_unchanged(saved, prefix, getattr(pipe, prefix))
    # stop after the final training's checkpoint-2 and rerun: the same final LoRA
    again = tmp_path / "again"
    flags_again = _flags(tiny_sdxl_backbone, SUBJECT, again, shard, "--train_text_encoder", "--report_to", "none",
                         "--augmentation_ratio", "0.5", "--resume_from_checkpoint", "latest")
    run_bat(parse_run_config(flags_again + ["--max_train_steps", "2"]))
    run_bat(parse_run_config(flags_again))
    first, second = load_file(out / "pytorch_lora_weights.safetensors"), load_file(again / "pytorch_lora_weights.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_missing_second_text_encoder_is_named(tmp_path, tiny_sdxl_backbone):
    import shutil

    from dreambat.backbone.load import resolve_backbone
    from dreambat.errors import ModelNotFoundError

    broken = shutil.copytree(tiny_sdxl_backbone, tmp_path / "sdxl")
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ModelNotFoundError, match="missing subfolder.*text_encoder_2"):
        resolve_backbone(str(broken))
    assert json.loads((broken / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"


def test_each_rows_original_size_conditions_sdxl_as_the_pipelines_time_ids(tiny_sdxl_backbone):
    backbone = load_backbone(str(tiny_sdxl_backbone))
    pipe = StableDiffusionXLPipeline(vae=backbone.vae, text_encoder=backbone.text_encoder,
                                     text_encoder_2=backbone.text_encoder_2, tokenizer=backbone.tokenizer,
                                     tokenizer_2=backbone.tokenizer_2, unet=backbone.unet,
                                     scheduler=backbone.noise_scheduler, add_watermarker=False)
    with torch.no_grad():
        ours = unet_conditioning(backbone, ["a", "b"], size=(32, 32), original_sizes=[(512, 768), (40, 30)])
    dim = backbone.text_encoder_2.config.projection_dim
    for row, original in enumerate([(512, 768), (40, 30)]):
        want = pipe._get_add_time_ids(original, (0, 0), (32, 32), dtype=torch.float32, text_encoder_projection_dim=dim)
        torch.testing.assert_close(ours["added_cond_kwargs"]["time_ids"][row:row + 1], want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="1 original sizes for 2 prompts"):
        unet_conditioning(backbone, ["a", "b"], original_sizes=[(1, 1)])


def test_original_sizes_come_from_img2datasets_metadata_else_the_image(tmp_path):
    """Candidates (scoring and final training) carry img2dataset's original_height/width; subject
    photos, class images and candidates without them their decoded size; a training batch has them
    when every row does."""
    from PIL import Image

    from dreambat.bat.backbone_data import SelectedBackboneDataset
    from dreambat.data.records import candidate_record
    from dreambat.data.shard_writer import ShardRecord, write_shards
    from dreambat.data.shards import ShardReader
    from dreambat.data.stream import _collate
    from dreambat.data.subject import SubjectDataset, collate_subject
    from dreambat.data.transforms import ImageTransform, original_size
    from dreambat.scoring.run import collate_candidates

    image = Image.new("RGB", (48, 40), (200, 10, 10))
    shard = write_shards([
        ShardRecord("a", image, "a red square", {"key": "a", "status": "success", "caption": "a red square",
                                                  "width": 48, "height": 40, "original_width": 960,
                                                  "original_height": 800}),
        ShardRecord("b", image, "a red square"),  # the writer's defaults: no original size
    ], tmp_path / "shard-00000.tar")[0]
    samples = list(ShardReader([str(shard)], min_image_size=0))
    assert [original_size(s.image, s.metadata) for s in samples] == [(800, 960), (40, 48)]
    batch = collate_candidates(samples, ImageTransform(32, center_crop=True))
    assert batch["original_sizes"] == [(800, 960), (40, 48)]
    records = [candidate_record(s.index, s.key, s.url, s.caption, 1.0, selected=True) for s in samples]
    kept = SelectedBackboneDataset(records, 32)
    assert [kept[i]["original_size"] for i in range(2)] == [(800, 960), (40, 48)]
    subject = SubjectDataset(SUBJECT, PROMPT, 32, center_crop=True)
    photo = subject.images[0].image
    assert collate_subject([subject[0]])["original_sizes"] == [(photo.height, photo.width)]
    mixed = _collate([subject[0], kept[0]], ["subject", "backbone"])
    assert mixed["original_sizes"] == [(photo.height, photo.width), (800, 960)]
    assert "original_sizes" not in _collate([subject[0], {k: v for k, v in kept[0].items() if k != "original_size"}],
                                            ["subject", "backbone"])


def test_dreambat_score_on_sdxl_gives_the_bat_runs_scores(sdxl_run, tmp_path, shard):  # noqa: F811
    """``dreambat score`` with the SDXL run's surrogate: the same scores its score stage wrote."""
    from dreambat.cli import score_main

    out = tmp_path / "scores"
    flags = ["--pretrained_model_name_or_path", str(sdxl_run["backbone"]), "--instance_data_dir", str(SUBJECT),
             "--instance_prompt", PROMPT, "--backbone_shards", shard, "--output_dir", str(out), "--seed", "0",
             "--surrogate_lora", str(sdxl_run["out"] / "surrogate"), "--num_score_timesteps", "2",
             "--reference_draws", "2", "--score_batch_size", "4"]
    assert score_main(flags, prog="dreambat score") == 0
    mine = read_manifest(out / "selection.jsonl")
    theirs = read_manifest(sdxl_run["out"] / "selection.jsonl")
    assert [r.key for r in mine] == [r.key for r in theirs]
    # the run was launched with one thread, this process may have more: equal up to float32 reduction order
    scale = max(abs(r.score) for r in theirs)
    assert max(abs(a.score - b.score) for a, b in zip(mine, theirs)) <= 1e-4 * scale


@pytest.mark.parametrize("point", ["score", "train"])
def test_sdxl_run_killed_then_rerun_gives_the_uninterrupted_outputs(
        point, tmp_path, tiny_sdxl_backbone, shard, sdxl_uninterrupted):  # noqa: F811
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    flags = stops._flags(tiny_sdxl_backbone, out, shard)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # bit for bit needs the same threads
    killed = subprocess.run([sys.executable, "-m", "tests.runs.stop_points", point, "SIGKILL", "train", *flags],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_bat(parse_run_config(flags))
    stops._assert_clean(out)
    stops._assert_stages(out, point)
    stops._assert_same(stops._outputs(out), sdxl_uninterrupted)


def test_sdxl_text_encoder_loras_train_in_two_processes(sdxl_run, tmp_path, shard):  # noqa: F811
    """SDXL reads the first encoder's penultimate layer, so its last layer's LoRA gets no gradient:
    DDP must be told (find_unused_parameters), or the second step stops every rank."""
    out = tmp_path / "out"
    _launch(_flags(sdxl_run["backbone"], SUBJECT, out, shard, "--surrogate_lora", str(sdxl_run["out"] / "surrogate"),
                   "--train_text_encoder", "--max_train_steps", "3", "--report_to", "none", validation=False),
            processes=2)
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    assert {k.split(".")[0] for k in saved} == {"unet", "text_encoder", "text_encoder_2"}
    assert any(v.abs().sum() > 0 for k, v in saved.items() if k.startswith("text_encoder_2.") and ".up." in k)
    assert json.loads((out / "bat_report.json").read_text())["num_processes"] == 2
