"""The LoRA training loop: one optimiser step at a time, under accelerate.

The loop knows the denoising objective (through :mod:`dreambat.diffusion`) but not where batches
come from: any source of ``{"pixel_values": [B,3,H,W], "prompts": list[str]}`` batches works,
which is what lets the same loop train a plain DreamBooth LoRA, the ALBAT surrogate, and the final
LoRA on a subject/backbone mixture. Batches may carry ``"sources"``; rows marked ``"class"`` are
prior-preservation rows and enter the loss as ``instance + prior_loss_weight x prior``.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from ..backbone.load import Backbone
from ..data.stream import CLASS
from ..diffusion import (
    denoising_loss,
    diffusion_target,
    encode_images,
    offset_noise,
    unet_conditioning,
)
from ..errors import ConfigError
from ..lora import lora_parameters
from ..pivotal import PivotalEmbedding
from ..preemption import Preempted, stop_requested
from ..progress import progress
from .checkpoints import checkpoint_step, register_lora_state_hooks
from .config import TrainConfig

logger = logging.getLogger(__name__)

BatchSource = Iterable[dict] | Callable[[int], Iterable[dict]]


@dataclass
class TrainState:
    """What a finished (or interrupted) loop reports.

    ``losses`` holds one loss per optimiser step taken by this call (after ``start_step`` when
    resumed), averaged over processes.
    """

    global_step: int = 0
    losses: list[float] = field(default_factory=list)
    start_step: int = 0
    resumed_from: Path | None = None


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def micro_batches_per_epoch(num_subject_images: int, batch_size: int) -> int:
    """Micro-batches in one pass over the subject images: ``ceil(images / batch size)``."""
    return math.ceil(num_subject_images / batch_size)


def total_train_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """Optimiser steps of the run: ``--max_train_steps`` or epochs x steps per epoch."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    return config.num_train_epochs * steps_per_epoch(config, batches_per_epoch)


def steps_per_epoch(config: TrainConfig, batches_per_epoch: int) -> int:
    """Optimiser steps per epoch of ``batches_per_epoch`` micro-batches."""
    return math.ceil(batches_per_epoch / config.gradient_accumulation_steps)


def require_bitsandbytes() -> None:
    """Raise a :class:`ConfigError` naming the fix when ``--use_8bit_adam`` cannot work here."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "--use_8bit_adam needs the bitsandbytes package, which is not installed: run "
            "`pip install bitsandbytes`, or drop --use_8bit_adam to use torch's AdamW."
        )


def build_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], num_processes: int,
                    text_params: list[torch.nn.Parameter] = ()):
    """AdamW (or bitsandbytes' AdamW8bit) over ``params``, as diffusers' script sets it up.

    ``text_params`` (the text-encoder LoRA and new-token embeddings) form a second group at
    ``--text_encoder_lr`` when it is set."""
    scale = 1
    if config.scale_lr:
        scale = config.gradient_accumulation_steps * config.train_batch_size * num_processes
    lr = config.learning_rate * scale
    groups = [{"params": list(params)}]
    if text_params:
        groups.append({"params": list(text_params), "lr": (config.text_encoder_lr or config.learning_rate) * scale})
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:
        require_bitsandbytes()
        import bitsandbytes

        optimizer_class = bitsandbytes.optim.AdamW8bit
    return optimizer_class(
        [g for g in groups if g["params"]],
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def training_loss(backbone: Backbone, config: TrainConfig, batch: dict, text_encoder, unet,
                  text_encoder_2=None) -> torch.Tensor:
    """Denoising loss of ``batch`` at random timesteps (ε or v target, optional Min-SNR).

    Rows whose ``batch["sources"]`` entry is ``"class"`` are prior-preservation rows: the loss is
    then ``mean(instance rows) + prior_loss_weight x mean(class rows)``, as in diffusers (with
    ``--snr_gamma`` both parts are Min-SNR weighted). Noise and timesteps come from torch's
    global RNG, which accelerate's checkpoints save and restore.
    """
    scheduler = backbone.noise_scheduler
    latents = encode_images(backbone.vae, batch["pixel_values"])
    noise = offset_noise(latents, config.noise_offset)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    ).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    conditioning = unet_conditioning(backbone, batch["prompts"], text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, size=tuple(batch["pixel_values"].shape[-2:]),
                                     crop_top_left=config.crop_top_left, original_sizes=batch.get("original_sizes"))
    prediction = unet(noisy, timesteps, **conditioning, return_dict=False)[0]
    target = diffusion_target(scheduler, latents, noise, timesteps)
    per_sample = denoising_loss(
        prediction, target, scheduler=scheduler, timesteps=timesteps, snr_gamma=config.snr_gamma
    )
    is_prior = torch.tensor([s == CLASS for s in batch.get("sources", ())], dtype=torch.bool)
    if not is_prior.any():
        return per_sample.mean()
    is_prior = is_prior.to(per_sample.device)
    return per_sample[~is_prior].mean() + config.prior_loss_weight * per_sample[is_prior].mean()


def train_lora(
    config: TrainConfig,
    backbone: Backbone,
    batches: BatchSource,
    accelerator: Accelerator,
    *,
    num_steps: int,
    description: str = "train",
    on_step: Callable[[int], None] | None = None,
    on_stop: Callable[[int], Path | None] | None = None,
    resume_from: str | Path | None = None,
    pivotal: PivotalEmbedding | None = None,
) -> TrainState:
    """Train the LoRA adapters already attached to ``backbone`` up to optimiser step ``num_steps``.

    Args:
        config: optimisation settings (learning rate, schedule, clipping, accumulation, ...).
        backbone: components with LoRA adapters on the UNet (and the text encoder when
            ``config.train_text_encoder``).
        batches: this process's batches ``{"pixel_values": [B,3,H,W] in [-1,1], "prompts":
            list[str], "sources"?: list[str]}``. Either a callable ``start -> iterable`` that
            yields the batches from micro-step ``start`` on (a resumable stream, e.g.
            ``TrainingStream.iterate``), or a plain iterable that is cycled (and, on resume,
            replayed up to the restart point). It is not sharded by accelerate.
        accelerator: prepares modules, optimiser and schedule for the launch configuration.
        num_steps: optimiser step to stop at (each of ``gradient_accumulation_steps`` micro-batches).
        description: progress-bar label and prefix of the logged metrics.
        on_step: called with the global step after each optimiser step, on every process
            (validation, checkpoints).
        on_stop: called with the global step, on every process, when a stop signal arrived
            (:mod:`dreambat.preemption`): saves a checkpoint and returns its folder. The loop then
            raises :class:`~dreambat.preemption.Preempted`. The signal is looked at after every
            optimiser step (combined over processes, so all stop at the same step).
        resume_from: a ``checkpoint-N`` folder: restore the LoRA weights, optimiser, schedule and
            RNG states saved there, then continue from step N.
        pivotal: new-token embeddings to train beside the LoRA (``--train_text_encoder_ti``), for
            the first ``--train_text_encoder_ti_frac`` of the steps; their gradient is averaged
            over processes here (they are not part of any wrapped module).

    Returns:
        The final :class:`TrainState` with the per-step loss (averaged over processes).

    Raises:
        Preempted: a stop signal arrived; the state of the last finished step is saved by ``on_stop``.
    """
    text_encoder = backbone.text_encoder if config.train_text_encoder else None
    text_encoder_2 = backbone.text_encoder_2 if config.train_text_encoder else None  # SDXL's second one
    unet_params = lora_parameters(backbone.unet)
    text_params = lora_parameters(text_encoder, text_encoder_2) + ([pivotal.vectors] if pivotal is not None else [])
    params = unet_params + text_params
    optimizer = build_optimizer(config, unet_params, accelerator.num_processes, text_params)
    pivot_step = math.ceil(config.train_text_encoder_ti_frac * num_steps) if pivotal is not None else None
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
    modules = [backbone.unet] + [m for m in (text_encoder, text_encoder_2) if m is not None]
    prepared = accelerator.prepare(*modules, optimizer, lr_scheduler)
    models = list(prepared[: len(modules)])
    optimizer, lr_scheduler = prepared[-2:]
    unet = models[0]
    # the wrapped text encoders, the ones forward passes must go through (DDP averages their gradients)
    wrapped_text = dict(zip(("text_encoder", "text_encoder_2"), models[1:])) if text_encoder is not None else {}
    hooks = register_lora_state_hooks(accelerator, backbone.unet, text_encoder, pivotal=pivotal,
                                      text_encoder_2=text_encoder_2)

    state = TrainState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state.global_step = state.start_step = checkpoint_step(resume_from) or 0
        state.resumed_from = Path(resume_from)
        logger.info("Resumed from %s at step %d.", resume_from, state.global_step)
        if state.global_step >= num_steps:
            logger.info("The checkpoint is at or past the last step (%d): nothing left to train.", num_steps)
    stream = _batches_from(batches, state.global_step * config.gradient_accumulation_steps)
    for module in modules:
        module.train()

    bar = progress(
        total=num_steps, initial=state.global_step, desc=description,
        disable=not accelerator.is_local_main_process, unit="step",
    )
    try:
        while state.global_step < num_steps:
            if pivotal is not None:
                # the pivot: past it the embeddings get no gradient, so AdamW leaves them as they are
                pivotal.vectors.requires_grad_(state.global_step < pivot_step)
            with accelerator.accumulate(*models):
                batch = next(stream)
                loss = training_loss(backbone, config, batch, wrapped_text.get("text_encoder", backbone.text_encoder),
                                     unet, text_encoder_2=wrapped_text.get("text_encoder_2"))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if pivotal is not None and pivotal.vectors.grad is not None and accelerator.num_processes > 1:
                        pivotal.vectors.grad = accelerator.reduce(pivotal.vectors.grad, reduction="mean")
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
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if on_step is not None:
                on_step(state.global_step)
            signum = stop_requested(accelerator)
            if signum:
                saved = on_stop(state.global_step) if on_stop is not None else None
                where = f"at step {state.global_step} of {num_steps} of {description}"
                raise Preempted(signum, f"Stopped by {signal.Signals(signum).name} {where}"
                                + (f"; its state is saved in {saved}" if saved is not None else "")
                                + ". Rerun the same command with --resume_from_checkpoint latest to continue.")
    finally:
        bar.close()
        for hook in hooks:
            hook.remove()
        for module in modules:
            module.eval()
    return state


def _batches_from(batches: BatchSource, start: int) -> Iterator[dict]:
    """Batches from micro-step ``start`` on, from a resumable source or by replaying an iterable."""
    if callable(batches):
        return iter(batches(start))
    return itertools.islice(_cycle(batches), start, None)
