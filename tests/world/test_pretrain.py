"""The world backbone's pretraining: learning-rate schedule, resume, cool-down (tiny runs)."""

import json
import math

import pytest
import torch

from dreambat.errors import ConfigError
from dreambat_world.data import ASSETS_DIR, BUNDLED_SHARD
from dreambat_world.pretrain import Checkpoint, PretrainConfig, lr_factor, pretrain

SHARDS = (str(ASSETS_DIR / BUNDLED_SHARD),)


def _config(tmp_path, **overrides) -> PretrainConfig:
    # steps, not minutes, end each phase: what a test trains never depends on the machine's speed
    settings = dict(shards=SHARDS, work_dir=str(tmp_path / "work"), max_images=12, vae_minutes=5.0, vae_max_steps=2,
                    max_minutes=10.0, vae_batch_size=2, batch_size=2, warmup_steps=2, lr=1e-3,
                    text_lr=5e-4, checkpoint_minutes=10.0)
    settings.update(overrides)
    return PretrainConfig(**settings)


def test_lr_factor_warms_up_holds_then_cools_down_to_the_floor(tmp_path):
    cfg = _config(tmp_path, warmup_steps=10, decay_start=100, decay_steps=50, decay_floor=0.2)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == lr_factor(100, cfg) == 1.0
    assert lr_factor(125, cfg) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(150, cfg) == lr_factor(10_000, cfg) == pytest.approx(0.2)
    constant = _config(tmp_path, warmup_steps=10)
    assert lr_factor(10_000, constant) == 1.0


def test_cool_down_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="cool-down"):
        _config(tmp_path, decay_start=5, decay_floor=1.5)


def test_resumed_run_continues_the_step_count_and_applies_a_new_cool_down(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "backbone"
    first = pretrain(_config(tmp_path, max_steps=3), out)
    assert first["unet_steps"] == 3
    state = Checkpoint(tmp_path / "work").load()
    assert [g["lr"] for g in state["opt"]["param_groups"]] == pytest.approx([1e-3, 5e-4])

    second = pretrain(_config(tmp_path, max_steps=6, decay_start=3, decay_steps=3, decay_floor=0.1), out)
    assert second["unet_steps"] == 6 and second["vae_steps"] == first["vae_steps"]  # VAE not retrained
    state = Checkpoint(tmp_path / "work").load()
    assert [g["lr"] for g in state["opt"]["param_groups"]] == pytest.approx([1e-4, 5e-5])
    assert (out / "unet" / "config.json").is_file() and (out / "vae" / "config.json").is_file()


def test_a_resumed_run_tokenizes_as_the_run_it_continues(tmp_path, monkeypatch):
    from transformers import CLIPTokenizer

    from dreambat.backbone.tokenizer import BASE_WORDS, BOS_TOKEN, EOS_TOKEN, build_vocab_and_merges
    from dreambat_world.synthetic import VOCABULARY
    from dreambat_world.pretrain import run as module

    torch.set_num_threads(1)
    pretrain(_config(tmp_path, max_steps=1), tmp_path / "first")
    first_ids = CLIPTokenizer.from_pretrained(tmp_path / "first" / "tokenizer").get_vocab()
    # A later tokenizer builder that numbers tokens differently must not reach the resumed run.
    real = module.build_tiny_components

    def renumbered(*args, **kwargs):
        components = real(*args, **kwargs)
        vocab = components["tokenizer"].get_vocab()
        reversed_ids = {token: len(vocab) - 1 - i for token, i in vocab.items()}
        merges = build_vocab_and_merges([*BASE_WORDS, *VOCABULARY])[1]
        components["tokenizer"] = CLIPTokenizer(vocab=reversed_ids, merges=merges, model_max_length=77,
                                                bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                                unk_token=EOS_TOKEN, pad_token=EOS_TOKEN)
        return components

    monkeypatch.setattr(module, "build_tiny_components", renumbered)
    pretrain(_config(tmp_path, max_steps=2), tmp_path / "second")
    assert CLIPTokenizer.from_pretrained(tmp_path / "second" / "tokenizer").get_vocab() == first_ids


def test_read_log_keeps_the_last_record_of_a_repeated_step_and_plots(tmp_path):
    from dreambat_world.pretrain import plot_log, read_log

    work = tmp_path / "work"
    work.mkdir()
    lines = [{"phase": "vae", "step": 50, "mse": 0.1}, {"phase": "unet", "step": 50, "loss": 0.3},
             {"phase": "unet", "step": 100, "loss": 0.2},  # the stopped run, past its checkpoint
             {"phase": "unet", "step": 100, "loss": 0.25, "lr": 1e-3},  # the resumed run
             {"phase": "unet", "step": 150, "loss": 0.2, "lr": 5e-4}]
    (work / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_log(work)
    assert [(r["phase"], r["step"]) for r in records] == [("vae", 50), ("unet", 50), ("unet", 100), ("unet", 150)]
    assert records[2]["loss"] == 0.25
    assert plot_log(work, tmp_path / "loss.png").stat().st_size > 0
    continued = tmp_path / "continued"  # an --init_from run logs no VAE phase
    continued.mkdir()
    (continued / "log.jsonl").write_text("".join(json.dumps({"phase": "unet", "step": 50 * i, "loss": 0.1, "lr": 1e-3})
                                                 + "\n" for i in range(1, 30)))
    assert plot_log(continued, tmp_path / "continued.png").stat().st_size > 0


def test_device_and_precision_are_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA"):
        _config(tmp_path, device="cuda")
    with pytest.raises(ConfigError, match="device"):
        _config(tmp_path, device="gpu-please")
    with pytest.raises(ConfigError, match="bf16"):
        _config(tmp_path, mixed_precision="fp16")
    assert _config(tmp_path, device="auto").device == "auto"  # resolves to the CPU here


def test_same_seed_same_weights_and_bf16_autocast_trains(tmp_path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    runs = []
    for name, precision in (("a", "no"), ("b", "no"), ("c", "bf16")):
        out = tmp_path / name / "backbone"
        cfg = _config(tmp_path / name, max_steps=2, vae_minutes=5.0, vae_max_steps=2, device="cpu",
                      mixed_precision=precision)
        report = pretrain(cfg, out)
        assert report["device"] == "cpu" and report["vae_steps"] == 2 and report["unet_steps"] == 2
        runs.append(load_file(out / "unet" / "diffusion_pytorch_model.safetensors"))
    first, again, bf16 = runs
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(torch.isfinite(v.float()).all() for v in bf16.values())
    assert any(not torch.equal(first[k], bf16[k]) for k in first)  # autocast did change the arithmetic


def test_init_from_continues_a_saved_backbone_with_its_tokenizer_scale_and_weights(tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    torch.set_num_threads(1)
    base = tmp_path / "base" / "backbone"
    pretrain(_config(tmp_path / "base", max_steps=2, vae_minutes=5.0, vae_max_steps=2), base)
    saved = load_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    scale = json.loads((base / "vae" / "config.json").read_text())["scaling_factor"]

    # lr 0: the continued run must hand back exactly what it started from.
    out = tmp_path / "continued"
    report = pretrain(_config(tmp_path / "next", max_steps=2, lr=0.0, text_lr=0.0, init_from=str(base),
                              seed=5), out)
    assert report["vae_steps"] == 0 and report["unet_steps"] == 2  # the VAE phase was skipped
    assert report["scaling_factor"] == pytest.approx(scale)
    again = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    assert (CLIPTokenizer.from_pretrained(out / "tokenizer").get_vocab()
            == CLIPTokenizer.from_pretrained(base / "tokenizer").get_vocab())

    moved = pretrain(_config(tmp_path / "moved", max_steps=2, init_from=str(base), seed=5), tmp_path / "m")
    assert moved["unet_steps"] == 2
    trained = load_file(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(saved[k], trained[k]) for k in saved)


def test_init_from_must_be_a_backbone_folder(tmp_path):
    with pytest.raises(ConfigError, match="model_index.json"):
        _config(tmp_path, init_from=str(tmp_path / "nowhere"))


def test_export_checkpoint_writes_the_same_backbone_as_the_run(tmp_path):
    from safetensors.torch import load_file

    from dreambat.errors import DataError
    from dreambat_world.pretrain import export_checkpoint

    torch.set_num_threads(1)
    cfg = _config(tmp_path, max_steps=2)
    with pytest.raises(DataError, match="no denoiser checkpoint"):
        export_checkpoint(cfg, tmp_path / "early")
    pretrain(cfg, tmp_path / "trained")
    info = export_checkpoint(cfg, tmp_path / "exported")
    assert info["unet_steps"] == 2
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model")):
        a = load_file(tmp_path / "trained" / sub / f"{name}.safetensors")
        b = load_file(tmp_path / "exported" / sub / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    for sub in ("vae", "tokenizer"):
        assert sorted(p.name for p in (tmp_path / "trained" / sub).iterdir()) == \
            sorted(p.name for p in (tmp_path / "exported" / sub).iterdir())
    assert json.loads((tmp_path / "trained" / "vae" / "config.json").read_text())["scaling_factor"] == \
        json.loads((tmp_path / "exported" / "vae" / "config.json").read_text())["scaling_factor"]
