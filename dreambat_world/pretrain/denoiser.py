"""Phase 2 of pretraining: the UNet and the CLIP text encoder, jointly, on the pool's latents."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from dreambat.diffusion import denoising_loss, min_snr_weight

from .config import PretrainConfig, autocast, lr_factor
from .log import append_log
from .state import Checkpoint


def train_denoiser(components: dict[str, Any], latents: torch.Tensor, token_ids: torch.Tensor,
                   empty_ids: torch.Tensor, cfg: PretrainConfig, state: dict[str, Any],
                   ckpt: Checkpoint, log_path: Path, deadline: float,
                   elapsed: Callable[[], float] = lambda: 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Train UNet + text encoder jointly on scaled ``latents`` ``(N, 4, h, w)`` and their caption
    ``token_ids`` ``(N, 77)``; returns the EMA copies ``(unet, text_encoder)``.

    ``elapsed()`` gives the seconds spent so far over all runs; checkpoints store it so a resumed
    run keeps to the overall budget."""
    unet, text_encoder, scheduler = components["unet"], components["text_encoder"], components["scheduler"]
    device = next(unet.parameters()).device
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
    ema_unet = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay)
    if "ema_unet" in state:
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": cfg.lr},
                             {"params": text_encoder.parameters(), "lr": cfg.text_lr}], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
    if "opt" in state:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        # The schedule is this run's: a resumed run may add a cool-down or change the rates.
        sched.base_lrs = [cfg.lr, cfg.text_lr]
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["initial_lr"] = base
            group["lr"] = base * lr_factor(sched.last_epoch, cfg)
    step = state.get("step", 0)
    gen = torch.Generator().manual_seed(cfg.seed + 7 + step)
    num_timesteps = scheduler.config.num_train_timesteps
    token_ids, empty_ids = token_ids.to(device), empty_ids.to(device)
    unet.train()
    text_encoder.train()
    last_save, losses = time.time(), []

    def snapshot() -> dict[str, Any]:
        return {**state, "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                "seconds": elapsed()}

    while time.time() < deadline and step < cfg.max_steps:
        idx = torch.randint(len(latents), (cfg.batch_size,), generator=gen).to(device)
        x0 = latents[idx]
        ids = token_ids[idx].clone()
        drop = (torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout).to(device)
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, num_timesteps, (cfg.batch_size,), generator=gen).to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        with autocast(cfg, device):
            hidden = text_encoder(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        per_sample = denoising_loss(pred, noise)
        losses.append(per_sample.detach().mean().item())  # logged unweighted, comparable across recipes
        if cfg.snr_gamma is not None:
            per_sample = per_sample * min_snr_weight(scheduler, t, cfg.snr_gamma).to(device)
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        opt.step()
        sched.step()
        step += 1
        ema_unet.step(unet.parameters())  # decay min(ema_decay, (1 + n) / (10 + n)), n = steps before
        ema_text.step(text_encoder.parameters())
        if step % 50 == 0:
            append_log(log_path, {"phase": "unet", "step": step, "loss": float(np.mean(losses)),
                            "lr": opt.param_groups[0]["lr"], "t": time.time()})
            losses = []
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            ckpt.save(snapshot())
            last_save = time.time()
    ckpt.save(snapshot())
    state.update(step=step)
    return _averaged(unet, ema_unet), _averaged(text_encoder, ema_text)


def _averaged(model: torch.nn.Module, ema: EMAModel) -> torch.nn.Module:
    """A copy of ``model`` holding the EMA weights, in eval mode."""
    averaged = copy.deepcopy(model)
    ema.copy_to(averaged.parameters())
    return averaged.eval()
