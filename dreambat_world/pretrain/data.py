"""The pool in memory for pretraining: decoded images, captions, and their VAE latents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dreambat.data.shards import ShardReader
from dreambat.errors import DataError

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




@torch.no_grad()
def encode_pool(vae: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Latent means of every image, ``(N, 4, h, w)`` float32 on the VAE's device (not yet scaled)."""
    device = next(vae.parameters()).device
    return torch.cat([vae.encode(to_pixels(images[i:i + batch]).to(device)).latent_dist.mean
                      for i in range(0, len(images), batch)])
