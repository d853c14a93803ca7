"""What every dreambat run starts from: a backbone, the subject photos, their prompt, an output folder.

:class:`RunInputs` holds those flags once; the training config and ``dreambat score`` both build
on it. :func:`resolve_inputs` turns them into local facts (backbone folder, photo files, image
size, photo digests) once, before any model loads, and the stages receive that object instead of
listing folders and hashing files again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from .backbone.load import native_resolution, resolve_backbone, resolve_vae
from .data.subject import readable_subject_images
from .errors import ConfigError
from .fields import flag


@dataclass
class RunInputs:
    """The backbone, the subject and where outputs go (shared by training and scoring)."""

    DEFAULT_OUTPUT_DIR: ClassVar[str] = "dreambat-lora"

    pretrained_model_name_or_path: str = flag(
        "Backbone: a local diffusers Stable Diffusion folder, or a hub id already in your "
        "Hugging Face cache (nothing is downloaded)."
    )
    instance_data_dir: str = flag("Folder with the 3-10 subject photos (jpg/jpeg/png/webp/bmp).")
    instance_prompt: str = flag("Prompt naming the subject, e.g. 'a photo of sks dog'.")
    pretrained_vae_model_name_or_path: str | None = flag(
        "A VAE to use instead of the backbone's (a local AutoencoderKL folder or a cached hub id), e.g. "
        "madebyollin/sdxl-vae-fp16-fix, SDXL's VAE that does not overflow in fp16.",
        default=None,
    )
    revision: str | None = flag("Revision (branch, tag or commit) of the backbone.", default=None)
    variant: str | None = flag("Weight variant of the backbone files, e.g. 'fp16'.", default=None)
    output_dir: str | None = flag(
        "Where the run's outputs are written (default: ./dreambat-lora for training, ./dreambat-scores "
        "for `dreambat score`).",
        default=None,
    )
    seed: int | None = flag("Seed for reproducible training, validation and random selection.", default=None)
    resolution: int | None = flag(
        "Image size; images are resized and cropped to it. Default: the backbone's native "
        "resolution (UNet sample_size x VAE scale factor).",
        default=None,
    )
    crops_coords_top_left_h: int = flag(
        "SDXL: the crop top coordinate its micro-conditioning is given (as in diffusers' SDXL script).", default=0
    )
    crops_coords_top_left_w: int = flag(
        "SDXL: the crop left coordinate its micro-conditioning is given (as in diffusers' SDXL script).", default=0
    )

    @property
    def crop_top_left(self) -> tuple[int, int]:
        """SDXL's ``(crop top, crop left)`` micro-conditioning."""
        return self.crops_coords_top_left_h, self.crops_coords_top_left_w

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = self.DEFAULT_OUTPUT_DIR
        if not self.instance_prompt or not self.instance_prompt.strip():
            raise ConfigError("--instance_prompt is empty; name the subject, e.g. 'a photo of sks dog'.")
        check_resolution(self.resolution)
        for name in ("crops_coords_top_left_h", "crops_coords_top_left_w"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}.")


def check_resolution(resolution: int | None) -> None:
    """The one check of ``--resolution``: unset, or a positive multiple of 8 (the VAE's factor)."""
    if resolution is None:
        return
    if resolution < 1:
        raise ConfigError(f"--resolution must be >= 1 when given, got {resolution}.")
    if resolution % 8:
        raise ConfigError(f"--resolution {resolution} is not a multiple of 8; the VAE needs it to be.")


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ResolvedInputs:
    """:class:`RunInputs` made concrete: the local backbone folder, the photo files, the image size."""

    backbone_path: Path
    subject_images: tuple[Path, ...]
    resolution: int

    @cached_property
    def subject_digests(self) -> list[str]:
        """SHA-256 prefixes of the subject photos, in file order (computed once)."""
        return [file_digest(p) for p in self.subject_images]


def resolve_inputs(inputs: RunInputs) -> ResolvedInputs:
    """Resolve the backbone and list the subject photos that decode; no model is loaded.

    Unreadable photos are named in one warning here, so a run that trains and scores several
    times on the same inputs says it once.

    Raises:
        ModelNotFoundError: the backbone cannot be found offline.
        SubjectDataError: the subject folder is missing or holds no readable image.
    """
    backbone_path = resolve_backbone(inputs.pretrained_model_name_or_path, inputs.revision)
    if inputs.pretrained_vae_model_name_or_path is not None:
        resolve_vae(inputs.pretrained_vae_model_name_or_path)
    images = tuple(readable_subject_images(inputs.instance_data_dir))  # warns once about unreadable photos
    return ResolvedInputs(backbone_path, images, inputs.resolution or native_resolution(backbone_path))
