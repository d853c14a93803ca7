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

from .config import WORLD_BACKBONE_SIZE, PretrainConfig, lr_factor
from .data import encode_pool, load_pool, to_pixels
from .denoiser import train_denoiser
from .log import plot_log, read_log
from .run import pretrain
from .state import Checkpoint, export_checkpoint, save_backbone
from .vae import train_vae

__all__ = [
    "WORLD_BACKBONE_SIZE", "Checkpoint", "PretrainConfig", "encode_pool", "export_checkpoint", "load_pool",
    "lr_factor", "plot_log", "pretrain", "read_log", "save_backbone", "to_pixels", "train_denoiser", "train_vae",
]
