#!/usr/bin/env python
"""Pre-train the world's tiny Stable Diffusion backbone on the pool, within a time budget.

    python scripts/make_world.py                                   # the pool, once
    OMP_NUM_THREADS=1 python scripts/pretrain_world_backbone.py --max_minutes 30

To continue training a saved backbone (a second constant-rate phase and cool-down, say):
--init_from assets/world/backbone --output_dir <new folder>.

Resumable: rerun with the same --work_dir and a larger --max_minutes to continue (the learning
rates and cool-down given on the resumed run apply from its first step; a run resumed on another
device follows the same batches). On a GPU (--device auto finds it) raise --batch_size and consider
--mixed_precision bf16. Writes the
diffusers folder to --output_dir (default assets/world/backbone) and, unless --no_grid,
a sample grid of the grid captions to assets/world/backbone_samples.png and the loss curves
to assets/world/backbone_loss.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, DEFAULT_POOL_DIR  # noqa: E402
from dreambat_world.pretrain import PretrainConfig, export_checkpoint, plot_log, pretrain  # noqa: E402
from dreambat_world.sampling import GRID_CAPTIONS, sample_grid  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool_dir", type=Path, default=REPO_ROOT / DEFAULT_POOL_DIR)
    p.add_argument("--work_dir", type=Path, default=REPO_ROOT / "outputs/world/pretrain")
    p.add_argument("--output_dir", type=Path, default=ASSETS_DIR / BACKBONE_DIR)
    p.add_argument("--grid", type=Path, default=ASSETS_DIR / "backbone_samples.png")
    p.add_argument("--no_grid", action="store_true")
    p.add_argument("--loss_plot", type=Path, default=ASSETS_DIR / "backbone_loss.png")
    p.add_argument("--max_images", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_minutes", type=float, default=30.0)
    p.add_argument("--vae_minutes", type=float, default=12.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--vae_batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--text_lr", type=float, default=5e-4)
    p.add_argument("--snr_gamma", type=float, default=5.0, help="min-SNR weighting; 0 turns it off")
    p.add_argument("--warmup_steps", type=int, default=100)
    p.add_argument("--ema_decay", type=float, default=0.995)
    p.add_argument("--max_steps", type=int, default=1_000_000)
    p.add_argument("--vae_max_steps", type=int, default=None, help="end the VAE phase after this many steps")
    p.add_argument("--decay_start", type=int, default=None,
                   help="step where a cosine cool-down of the learning rates begins (default: none)")
    p.add_argument("--decay_steps", type=int, default=10_000, help="length of the cool-down in steps")
    p.add_argument("--decay_floor", type=float, default=0.1,
                   help="learning rates end at this fraction of --lr / --text_lr")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--mixed_precision", default="no", choices=["no", "bf16"],
                   help="bf16 autocast of the forward passes (weights and optimiser stay float32)")
    p.add_argument("--init_from", type=Path, default=None,
                   help="continue from this backbone folder (e.g. assets/world/backbone): skips the VAE phase "
                        "and trains its UNet and text encoder with a fresh optimiser from step 0")
    p.add_argument("--export_only", action="store_true",
                   help="write --output_dir from the EMA weights of --work_dir's checkpoint and stop (no training)")
    p.add_argument("--checkpoint_minutes", type=float, default=2.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shards = tuple(str(s) for s in sorted(args.pool_dir.glob("shard-*.tar")))
    cfg = PretrainConfig(shards=shards, work_dir=str(args.work_dir), max_images=args.max_images,
                         seed=args.seed, vae_minutes=args.vae_minutes, max_minutes=args.max_minutes,
                         batch_size=args.batch_size, vae_batch_size=args.vae_batch_size, lr=args.lr,
                         text_lr=args.text_lr, snr_gamma=args.snr_gamma or None,
                         warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
                         max_steps=args.max_steps, vae_max_steps=args.vae_max_steps, decay_start=args.decay_start,
                         decay_steps=args.decay_steps, decay_floor=args.decay_floor,
                         checkpoint_minutes=args.checkpoint_minutes, device=args.device,
                         mixed_precision=args.mixed_precision,
                         init_from=str(args.init_from) if args.init_from else None)
    if args.export_only:
        print(json.dumps(export_checkpoint(cfg, args.output_dir), indent=1))
        return
    report = pretrain(cfg, args.output_dir)
    print(json.dumps(report, indent=1))
    print(f"loss curves -> {plot_log(args.work_dir, args.loss_plot)}")
    if not args.no_grid:
        sample_grid(args.output_dir, GRID_CAPTIONS, seeds=(0, 1, 2, 3)).save(args.grid)
        print(f"grid -> {args.grid}")


if __name__ == "__main__":
    main()
