"""Phase 1 of pretraining: the VAE as an autoencoder on the pool's images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import PretrainConfig, autocast
from .data import to_pixels
from .log import append_log
from .state import Checkpoint

def train_vae(vae: torch.nn.Module, images: torch.Tensor, cfg: PretrainConfig, state: dict[str, Any],
              ckpt: Checkpoint, log_path: Path, deadline: float) -> None:
    """Train ``vae`` in place until ``deadline`` (``time.time()`` seconds); resumes from ``state``.

    ``images`` stay on the CPU (uint8); each batch is moved to the VAE's device."""
    device = next(vae.parameters()).device
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    gen = torch.Generator().manual_seed(cfg.seed + 1 + state.get("vae_step", 0))
    step, last_save, losses = state.get("vae_step", 0), time.time(), []
    vae.train()
    while time.time() < deadline and (cfg.vae_max_steps is None or step < cfg.vae_max_steps):
        idx = torch.randint(len(images), (cfg.vae_batch_size,), generator=gen)
        x = to_pixels(images[idx]).to(device)
        with autocast(cfg, device):
            posterior = vae.encode(x).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=gen).to(device)
            recon = vae.decode(posterior.mean + posterior.std * eps).sample
        mse = F.mse_loss(recon.float(), x)
        loss = mse + cfg.vae_kl_weight * posterior.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(mse.item())
        if step % 50 == 0:
            append_log(log_path, {"phase": "vae", "step": step, "mse": float(np.mean(losses)), "t": time.time()})
            losses = []
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            ckpt.save({**state, "vae": vae.state_dict(), "vae_opt": opt.state_dict(), "vae_step": step})
            last_save = time.time()
    vae.eval()
    state.update(vae=vae.state_dict(), vae_opt=opt.state_dict(), vae_step=step)
