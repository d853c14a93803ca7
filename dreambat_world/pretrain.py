"""Pre-training the world's tiny Stable Diffusion backbone on the backbone pool, on a CPU budget.

Two phases, both resumable from one checkpoint file and bounded by wall-clock minutes:

1. **VAE**: the :class:`~diffusers.AutoencoderKL` is trained as an autoencoder (MSE plus a tiny
   KL term) on the pool's 32 px images; a random decoder cannot draw anything. Its
   ``scaling_factor`` is then set to ``1 / std`` of the pool's latent means, as SD's 0.18215 is.
2. **Denoiser**: the VAE is frozen, every pool image is encoded once (latent *means*, as
   :func:`dreambat.diffusion.encode_latents` trains on them), and the UNet and the CLIP text
   encoder are trained *jointly* from scratch on epsilon-prediction with uniform timesteps,
   10% of captions replaced by "" so classifier-free guidance works, and the loss weighted by
   min-SNR-gamma (Hang et al. 2023), reported to converge about 3x faster than the plain loss.
   An EMA of both is what is saved.

Both phases run on ``device`` (``"auto"``: CUDA when available, else CPU), optionally under
bf16 autocast. Every random draw (batch indices, noise, timesteps, caption dropout, VAE
posterior samples) comes from a CPU generator and is moved to the device, so a run follows the
same batches on any device.

The result is an ordinary diffusers folder (safetensors; UNet and VAE stored as float16, loaded
back as float32) that
:func:`dreambat.backbone.load.load_backbone` and ``StableDiffusionPipeline.from_pretrained`` load.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from dreambat.backbone.tiny import TinySize, build_tiny_components
from dreambat.data.shards import ShardReader
from dreambat.errors import ConfigError, DataError
from dreambat.eval.encoders import resolve_device

from .synthetic import VOCABULARY

WORLD_BACKBONE_SIZE = TinySize(
    resolution=32,
    unet_channels=(32, 64, 64),
    unet_layers_per_block=1,
    unet_head_dim=8,
    vae_channels=(32, 64),
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    unet_attention=(False, True, True),
    vae_mid_attention=False,
)
"""The world backbone: 32 px images, 16x16x4 latents, a three-level UNet (16, 8, 4 px) with
cross-attention at 8 and 4 px only: attention over the 256 positions of the 16 px level made a
CPU training step 2.4x slower and the objects are readable from 8 px up."""


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of :func:`pretrain`.

    Attributes:
        shards: pool shard paths (``scripts/make_world.py`` writes them).
        work_dir: checkpoint and log folder (resume reads ``work_dir/checkpoint.pt``).
        max_images: use at most this many pool images (None: all).
        seed: seeds the weights, batch order, noise and caption dropout.
        vae_minutes / max_minutes: wall-clock budget of the VAE phase / of both phases together.
        vae_batch_size, vae_lr, vae_kl_weight: VAE phase.
        vae_max_steps: end the VAE phase after this many steps even within its budget (None: time only).
        batch_size, lr, text_lr, warmup_steps, ema_decay, caption_dropout: denoiser phase.
        snr_gamma: min-SNR loss weighting ``min(snr, gamma) / snr`` (None: the plain MSE).
        max_steps: stop the denoiser phase after this many steps even within budget.
        decay_start, decay_steps: cool-down. From step ``decay_start`` the learning rates follow a
            cosine from their value down to ``decay_floor`` times it over ``decay_steps`` steps,
            then stay there (None: constant after warm-up). The schedule is a function of the
            step only, so setting it when resuming a constant-rate run reproduces the same recipe.
        checkpoint_minutes: write the checkpoint this often.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        mixed_precision: ``"no"`` or ``"bf16"`` (autocast of the forward passes; weights, optimiser
            state and EMA stay float32).
        init_from: a backbone folder (what :func:`save_backbone` writes) to continue from: its
            tokenizer, VAE, text encoder and UNet replace the freshly built ones, the VAE phase is
            skipped (its latents stay those the UNet learned on) and the denoiser phase starts at
            step 0 with a fresh optimiser and the learning rates of this config. Only read when
            ``work_dir`` has no checkpoint yet; a resumed run continues from its checkpoint.
    """

    shards: tuple[str, ...]
    work_dir: str
    max_images: int | None = None
    seed: int = 0
    vae_minutes: float = 5.0
    max_minutes: float = 30.0
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_max_steps: int | None = None
    batch_size: int = 32
    lr: float = 5e-4
    text_lr: float = 2e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    snr_gamma: float | None = 5.0
    max_steps: int = 1_000_000
    decay_start: int | None = None
    decay_steps: int = 10_000
    decay_floor: float = 0.1
    checkpoint_minutes: float = 2.0
    device: str = "auto"
    mixed_precision: str = "no"
    init_from: str | None = None
    size: TinySize = field(default=WORLD_BACKBONE_SIZE)

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("PretrainConfig needs at least one pool shard; run scripts/make_world.py.")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}.")
        if self.vae_minutes >= self.max_minutes:
            raise ConfigError("vae_minutes must be smaller than max_minutes (the denoiser needs time).")
        if self.init_from is not None and not (Path(self.init_from) / "model_index.json").is_file():
            raise ConfigError(f"init_from {self.init_from!r} is not a backbone folder (no model_index.json); "
                              "give the folder scripts/pretrain_world_backbone.py wrote, e.g. "
                              "assets/world/backbone.")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}.")
        try:
            device = resolve_device(self.device)
        except RuntimeError as error:
            raise ConfigError(f"Unknown device {self.device!r} ({error}); use 'auto', 'cpu' or 'cuda'.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but torch sees no CUDA GPU here; "
                              "use --device auto or cpu.")
        if self.decay_start is not None and (self.decay_start < 0 or self.decay_steps < 1
                                             or not 0 <= self.decay_floor <= 1):
            raise ConfigError("The cool-down needs decay_start >= 0, decay_steps >= 1 and "
                              f"0 <= decay_floor <= 1; got {self.decay_start}, {self.decay_steps}, "
                              f"{self.decay_floor}.")


def load_pool(shards: Sequence[str], max_images: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Decode pool shards into memory.

    Returns:
        images: ``(N, 3, H, W)`` uint8; captions: ``N`` strings.
    """
    images, captions = [], []
    for sample in ShardReader(list(shards), max_candidates=max_images):
        images.append(np.asarray(sample.image.convert("RGB"), dtype=np.uint8))
        captions.append(sample.caption)
    if not images:
        raise DataError(f"No readable samples in {list(shards)}; rerun scripts/make_world.py.")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float in [-1, 1]."""
    return batch.float().div(127.5).sub(1.0)


class Checkpoint:
    """One file ``work_dir/checkpoint.pt`` holding the whole training state, written atomically."""

    def __init__(self, work_dir: str | Path):
        self.path = Path(work_dir) / "checkpoint.pt"

    def load(self) -> dict[str, Any] | None:
        return torch.load(self.path, weights_only=False, map_location="cpu") if self.path.is_file() else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def _autocast(cfg: PretrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """The denoiser's learning-rate multiplier at ``step``: linear warm-up, constant, then the
    optional cosine cool-down of ``cfg`` (see :class:`PretrainConfig`)."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.decay_start is not None and step > cfg.decay_start:
        progress = min(1.0, (step - cfg.decay_start) / cfg.decay_steps)
        factor *= cfg.decay_floor + (1 - cfg.decay_floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _log(log_path: Path, record: dict[str, Any]) -> None:
    with open(log_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


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
        with _autocast(cfg, device):
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
            _log(log_path, {"phase": "vae", "step": step, "mse": float(np.mean(losses)), "t": time.time()})
            losses = []
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            ckpt.save({**state, "vae": vae.state_dict(), "vae_opt": opt.state_dict(), "vae_step": step})
            last_save = time.time()
    vae.eval()
    state.update(vae=vae.state_dict(), vae_opt=opt.state_dict(), vae_step=step)


@torch.no_grad()
def encode_pool(vae: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Latent means of every image, ``(N, 4, h, w)`` float32 on the VAE's device (not yet scaled)."""
    device = next(vae.parameters()).device
    return torch.cat([vae.encode(to_pixels(images[i:i + batch]).to(device)).latent_dist.mean
                      for i in range(0, len(images), batch)])


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


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
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
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
    alphas = scheduler.alphas_cumprod.to(device)
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
        t = torch.randint(0, len(alphas), (cfg.batch_size,), generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with _autocast(cfg, device):
            hidden = text_encoder(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        losses.append(per_sample.detach().mean().item())  # logged unweighted, comparable across recipes
        if cfg.snr_gamma is not None:
            snr = a.flatten() / (1 - a.flatten())
            per_sample = per_sample * snr.clamp(max=cfg.snr_gamma) / snr
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        opt.step()
        sched.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        if step % 50 == 0:
            _log(log_path, {"phase": "unet", "step": step, "loss": float(np.mean(losses)),
                            "lr": opt.param_groups[0]["lr"], "t": time.time()})
            losses = []
        if time.time() - last_save > cfg.checkpoint_minutes * 60:
            ckpt.save(snapshot())
            last_save = time.time()
    ckpt.save(snapshot())
    state.update(step=step)
    return ema_unet.eval(), ema_text.eval()


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
        state = _initial_state(components, cfg.init_from)
    components["tokenizer"] = _run_tokenizer(work, components["tokenizer"])
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


def export_checkpoint(cfg: PretrainConfig, output_dir: str | Path) -> dict[str, Any]:
    """Save the EMA weights of the checkpoint in ``cfg.work_dir`` as a backbone folder, without
    training or reading the pool (to sample a run that is still going, or one that was stopped).

    Returns ``{"unet_steps", "scaling_factor", "output_dir"}``.
    """
    state = Checkpoint(cfg.work_dir).load()
    if not state or "ema_unet" not in state or "scaling_factor" not in state:
        raise DataError(f"{cfg.work_dir} holds no denoiser checkpoint to export (checkpoint.pt with EMA "
                        "weights and a latent scale); train with scripts/pretrain_world_backbone.py first.")
    components = build_tiny_components(cfg.size, seed=cfg.seed, words=VOCABULARY)
    components["tokenizer"] = _run_tokenizer(Path(cfg.work_dir), components["tokenizer"])
    components["vae"].load_state_dict(state["vae"])
    components["vae"].register_to_config(scaling_factor=state["scaling_factor"])
    components["unet"].load_state_dict(state["ema_unet"])
    components["text_encoder"].load_state_dict(state["ema_text"])
    save_backbone(components, output_dir)
    return {"unet_steps": state["step"], "scaling_factor": state["scaling_factor"], "output_dir": str(output_dir)}


def _initial_state(components: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """Load the backbone in ``folder`` into ``components`` and return the state that starts the
    denoiser phase from it (the VAE counts as trained).

    The weights are loaded as float32 (a saved backbone stores its UNet and VAE as float16). The
    folder's tokenizer replaces the built one: the text encoder's embeddings are indexed by it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = str(folder)
    common = {"local_files_only": True}
    loaded = {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32, **common),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32, **common),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder",
                                                      dtype=torch.float32, **common),
    }
    for name, model in loaded.items():
        try:
            components[name].load_state_dict(model.state_dict())
        except RuntimeError as error:
            raise ConfigError(f"init_from {folder!r}: its {name} does not match the configured size "
                              f"({str(error).splitlines()[0]}); pass the TinySize it was trained with.") from None
    components["tokenizer"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common)
    # The checkpoint carries the VAE (nothing trains it again) and the latent scale the UNet knows.
    return {"vae": components["vae"].state_dict(), "vae_done": True, "vae_step": 0,
            "scaling_factor": float(loaded["vae"].config.scaling_factor), "init_from": folder}


def _run_tokenizer(work: Path, built: Any) -> Any:
    """The tokenizer of the run in ``work``: the one saved when it started, else ``built`` (saved now).

    The text encoder learns one embedding per token id, so a resumed run must tokenize exactly
    as the run it continues did, even if the tokenizer builder has changed in between.
    """
    from transformers import CLIPTokenizer

    folder = work / "tokenizer"
    if (folder / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(folder)
    built.save_pretrained(folder)
    return built


def save_backbone(components: dict[str, Any], folder: str | Path,
                  half: Sequence[str] = ("unet", "vae")) -> Path:
    """Save the components as a diffusers Stable Diffusion folder (safetensors).

    The models named in ``half`` are stored as float16 to keep the committed folder small;
    diffusers loads them back into float32 modules (``from_pretrained`` with no dtype, and
    :func:`~dreambat.backbone.load.load_backbone`). The text encoder stays float32 because
    transformers would otherwise load it as float16 next to a float32 UNet.
    """
    stored = {name: copy.deepcopy(model).half() if name in half else model
              for name, model in components.items()
              if name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
    pipe = StableDiffusionPipeline(**stored, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def read_log(work_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines training log of a work dir, one record per (phase, step), in step order.

    A run stopped between checkpoints logs steps that its resumed run repeats; the later record
    of a step wins. Empty when there is no log.
    """
    path = Path(work_dir) / "log.jsonl"
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        latest[(record["phase"], record["step"])] = record
    order = {"vae": 0, "unet": 1}
    return sorted(latest.values(), key=lambda r: (order.get(r["phase"], 2), r["step"]))


def plot_log(work_dir: str | Path, path: str | Path) -> Path:
    """Loss curves of a pretraining run (VAE reconstruction MSE, UNet ε-MSE, and the UNet's
    learning rate where the log has it) against steps, as a PNG."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(work_dir)
    if not records:
        raise DataError(f"No training log in {work_dir}; run scripts/pretrain_world_backbone.py first.")
    panels = [(phase, key, title) for phase, key, title in
              (("vae", "mse", "VAE reconstruction MSE"), ("unet", "loss", "UNet ε-MSE (unweighted, 50-step means)"))
              if any(r["phase"] == phase for r in records)]  # a continued run has no VAE phase
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    axes = list(axes[0])
    for ax, (phase, key, title) in zip(axes, panels):
        rows = [r for r in records if r["phase"] == phase]
        steps, values = [r["step"] for r in rows], np.array([r[key] for r in rows])
        ax.plot(steps, values, lw=0.8, alpha=0.45)
        if len(values) >= 20:  # a running mean over 20 records (1,000 steps) shows the trend
            ax.plot(steps[19:], np.convolve(values, np.ones(20) / 20, mode="valid"), lw=1.6, color="C0")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    rates = [r for r in records if r["phase"] == "unet" and "lr" in r]
    if rates:
        lr_ax = axes[-1].twinx()
        lr_ax.plot([r["step"] for r in rates], [r["lr"] for r in rates], color="gray", lw=1, ls="--")
        lr_ax.set_ylabel("learning rate (dashed)", fontsize=8, color="gray")
        lr_ax.tick_params(labelsize=7, colors="gray")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
