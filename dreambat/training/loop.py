"""The LoRA training loop: one optimiser step at a time, under accelerate.

The loop knows the denoising objective (through :mod:`dreambat.diffusion`) but not where batches
come from: any iterable of ``{"pixel_values": [B,3,H,W], "prompts": list[str]}`` batches works,
which is what lets the same loop train a plain DreamBooth LoRA, the ALBAT surrogate, and the final
LoRA on a subject/backbone mixture.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from ..backbone.load import Backbone
from ..config import TrainConfig
from ..diffusion import (
    denoising_loss,
    diffusion_target,
    encode_images,
    encode_prompts,
    offset_noise,
    tokenize_prompts,
)
from ..lora import lora_parameters

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a finished (or interrupted) loop reports."""

    global_step: int = 0
    losses: list[float] = field(default_factory=list)


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def total_train_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """Optimiser steps of the run: ``--max_train_steps`` or epochs x steps per epoch."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    return config.num_train_epochs * math.ceil(batches_per_epoch / config.gradient_accumulation_steps)


def build_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], num_processes: int):
    """AdamW over ``params`` and its learning-rate schedule, as diffusers' script sets them up."""
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * num_processes
    optimizer = torch.optim.AdamW(
        params,
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    return optimizer


def training_loss(backbone: Backbone, config: TrainConfig, batch: dict, text_encoder, unet) -> torch.Tensor:
    """Mean denoising loss of ``batch`` at random timesteps (ε or v target, optional Min-SNR)."""
    scheduler = backbone.noise_scheduler
    latents = encode_images(backbone.vae, batch["pixel_values"])
    noise = offset_noise(latents, config.noise_offset)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    ).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    context = encode_prompts(text_encoder, tokenize_prompts(backbone.tokenizer, batch["prompts"]))
    prediction = unet(noisy, timesteps, context, return_dict=False)[0]
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return denoising_loss(
        prediction, target, scheduler=scheduler, timesteps=timesteps, snr_gamma=config.snr_gamma
    ).mean()


def train_lora(
    config: TrainConfig,
    backbone: Backbone,
    loader: Iterable[dict],
    accelerator: Accelerator,
    *,
    num_steps: int,
    description: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> TrainState:
    """Train the LoRA adapters already attached to ``backbone`` for ``num_steps`` optimiser steps.

    Args:
        config: optimisation settings (learning rate, schedule, clipping, accumulation, ...).
        backbone: components with LoRA adapters on the UNet (and the text encoder when
            ``config.train_text_encoder``).
        loader: batches ``{"pixel_values": [B,3,H,W] in [-1,1], "prompts": list[str]}``; it is
            cycled, so a short subject dataset serves any number of steps.
        accelerator: prepares modules, optimiser and loader for the launch configuration.
        num_steps: optimiser steps to take (each of ``gradient_accumulation_steps`` micro-batches).
        description: progress-bar label.
        on_step: called with the global step after each optimiser step (validation, checkpoints).

    Returns:
        The final :class:`TrainState` with the per-step loss (averaged over processes).
    """
    text_encoder = backbone.text_encoder if config.train_text_encoder else None
    params = lora_parameters(backbone.unet, text_encoder)
    optimizer = build_optimizer(config, params, accelerator.num_processes)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=num_steps * accelerator.num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
    if config.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    modules = [backbone.unet] + ([text_encoder] if text_encoder is not None else [])
    prepared = accelerator.prepare(*modules, optimizer, loader, lr_scheduler)
    unet = prepared[0]
    text_encoder = prepared[1] if text_encoder is not None else None
    optimizer, loader, lr_scheduler = prepared[-3:]
    for module in modules:
        module.train()

    state = TrainState()
    progress = tqdm(
        total=num_steps, desc=description, disable=not accelerator.is_local_main_process, unit="step"
    )
    batches = _cycle(loader)
    while state.global_step < num_steps:
        with accelerator.accumulate(*modules):
            batch = next(batches)
            loss = training_loss(backbone, config, batch, text_encoder or backbone.text_encoder, unet)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        state.global_step += 1
        step_loss = accelerator.gather(loss.detach().reshape(1)).mean().item()
        state.losses.append(step_loss)
        lr = lr_scheduler.get_last_lr()[0]
        accelerator.log({f"{description}/loss": step_loss, f"{description}/lr": lr}, step=state.global_step)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if on_step is not None:
            on_step(state.global_step)
    progress.close()
    for module in modules:
        module.eval()
    return state
