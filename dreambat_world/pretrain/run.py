"""A whole pretraining run (both phases, resumable, on a wall-clock budget)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dreambat.backbone.tiny import build_tiny_components
from dreambat.eval.encoders import resolve_device

from ..synthetic import VOCABULARY
from .config import PretrainConfig
from .data import encode_pool, load_pool
from .denoiser import train_denoiser
from .state import Checkpoint, initial_state, run_tokenizer, save_backbone
from .vae import train_vae

def pretrain(cfg: PretrainConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) both phases within ``cfg.max_minutes`` and save the backbone folder.

    Returns:
        A report (settings, images, steps, seconds per phase, final losses, scaling factor),
        also written to ``work_dir/report.json``.
    """
    start = time.time()
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "log.jsonl"
    ckpt = Checkpoint(work)
    state = ckpt.load() or {}
    spent = state.get("seconds", 0.0)
    torch.manual_seed(cfg.seed)
    components = build_tiny_components(cfg.size, seed=cfg.seed, words=VOCABULARY)
    if cfg.init_from is not None and not state:
        state = initial_state(components, cfg.init_from)
    components["tokenizer"] = run_tokenizer(work, components["tokenizer"])
    device = resolve_device(cfg.device)
    for name in ("unet", "vae", "text_encoder"):
        components[name].to(device)
    images, captions = load_pool(cfg.shards, cfg.max_images)
    load_seconds = time.time() - start

    vae = components["vae"]
    if "vae" in state:
        vae.load_state_dict(state["vae"])
    if not state.get("vae_done"):
        train_vae(vae, images, cfg, state, ckpt, log_path,
                  start + max(0.0, cfg.vae_minutes * 60 - spent))
        state["vae_done"] = True
        state["vae_seconds"] = time.time() - start
        ckpt.save({**state, "seconds": spent + time.time() - start})
    vae.requires_grad_(False)

    t0 = time.time()
    raw = encode_pool(vae, images)
    # A continued backbone keeps the latent scale its UNet learned with.
    scale = state.get("scaling_factor") or 1.0 / float(raw.std())
    vae.register_to_config(scaling_factor=scale)
    state["scaling_factor"] = scale
    latents = raw * scale
    tok = components["tokenizer"]
    token_ids = tok(captions, padding="max_length", max_length=tok.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty_ids = tok([""], padding="max_length", max_length=tok.model_max_length,
                    return_tensors="pt").input_ids[0]
    encode_seconds = time.time() - t0
    deadline = start + cfg.max_minutes * 60 - spent
    unet, text_encoder = train_denoiser(components, latents, token_ids, empty_ids, cfg, state,
                                        ckpt, log_path, deadline,
                                        elapsed=lambda: spent + time.time() - start)
    components.update(unet=unet.cpu(), text_encoder=text_encoder.cpu(), vae=vae.cpu())
    save_backbone(components, output_dir)
    report = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "size"},
        "size": asdict(cfg.size),
        "images": len(images),
        "vae_steps": state.get("vae_step", 0),
        "unet_steps": state.get("step", 0),
        "scaling_factor": scale,
        "seconds_total_this_run": round(time.time() - start, 1),
        "seconds_before_resume": round(spent, 1),
        "seconds_load": round(load_seconds, 1),
        "seconds_encode": round(encode_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "parameters": {name: sum(p.numel() for p in components[name].parameters())
                       for name in ("unet", "vae", "text_encoder")},
    }
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return report
