"""Typed, validated configuration of a training run.

Flags keep the names of diffusers' ``examples/dreambooth/train_dreambooth_lora.py`` so a user's
existing command line works. The argparse parser is generated from these dataclasses (one place
for names, types, defaults and help), the command line is parsed once at the entry point, and
nothing below it ever sees an argparse namespace. ``__post_init__`` refuses invalid values and
combinations before any model is loaded, with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..fields import flag
from ..files import atomic_write_text
from ..inputs import RunInputs
from ..lora import check_lora_settings
from ..pivotal import NewTokens, check_new_token_settings

LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]



@dataclass
class TrainConfig(RunInputs):
    """A DreamBooth-LoRA run: :class:`~dreambat.inputs.RunInputs` plus optimisation, LoRA, validation,
    prior preservation and checkpoints."""

    center_crop: bool = flag("Center-crop instead of random-crop after resizing.", default=False)
    random_flip: bool = flag("Randomly flip training images horizontally.", default=False)
    train_text_encoder: bool = flag("Also train a LoRA on the text encoder.", default=False)
    train_text_encoder_ti: bool = flag(
        "Pivotal tuning: new tokens for --token_abstraction, their embeddings trained with the LoRA "
        "(saved as <output_dir>/<name>_emb.safetensors).", default=False
    )
    train_text_encoder_ti_frac: float = flag(
        "Share of the steps during which the new tokens' embeddings train (then they are frozen).", default=0.5
    )
    token_abstraction: str = flag(
        "The word of --instance_prompt that stands for the new tokens (with --train_text_encoder_ti).",
        default="TOK",
    )
    num_new_tokens_per_abstraction: int = flag("New tokens per abstraction: TOK -> <s0><s1>...", default=2)
    initializer_concept: str | None = flag(
        "Start the new tokens' embeddings from this word's (default: random, at the table's scale).", default=None
    )
    text_encoder_lr: float | None = flag(
        "Learning rate of the new-token embeddings and the text-encoder LoRA (default: --learning_rate).",
        default=None,
    )
    train_batch_size: int = flag("Batch size per process.", default=1)
    num_train_epochs: int = flag("Epochs, used when --max_train_steps is not set.", default=1)
    max_train_steps: int | None = flag("Total optimisation steps; overrides epochs.", default=None)
    gradient_accumulation_steps: int = flag("Micro-batches per optimiser step.", default=1)
    gradient_checkpointing: bool = flag("Trade compute for memory in the UNet.", default=False)
    learning_rate: float = flag("Initial learning rate (after warmup).", default=1e-4)
    scale_lr: bool = flag(
        "Multiply the learning rate by processes x batch size x accumulation steps.", default=False
    )
    lr_scheduler: LrScheduler = flag("Learning-rate schedule.", default="constant")
    lr_warmup_steps: int = flag("Warmup steps of the schedule.", default=0)
    lr_num_cycles: int = flag("Hard restarts for cosine_with_restarts.", default=1)
    lr_power: float = flag("Power of the polynomial schedule.", default=1.0)
    adam_beta1: float = flag("Adam beta1.", default=0.9)
    adam_beta2: float = flag("Adam beta2.", default=0.999)
    adam_weight_decay: float = flag("AdamW weight decay.", default=1e-2)
    adam_epsilon: float = flag("Adam epsilon.", default=1e-8)
    max_grad_norm: float = flag("Gradient clipping norm.", default=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = flag(
        "Mixed precision; default: accelerate's config.", default=None
    )
    rank: int = flag("LoRA rank.", default=4)
    lora_dropout: float = flag("Dropout inside the LoRA layers.", default=0.0)
    snr_gamma: float | None = flag(
        "Min-SNR weighting gamma (5.0 is the paper's value); off by default.", default=None
    )
    noise_offset: float = flag("Scale of offset noise (0.1 is common); 0 disables.", default=0.0)
    dataloader_num_workers: int = flag("DataLoader worker processes.", default=0)
    validation_prompt: str | None = flag(
        "Prompt rendered at the end of training (and every --validation_steps).", default=None
    )
    num_validation_images: int = flag("Images per validation prompt.", default=4)
    validation_steps: int | None = flag("Also validate every N optimiser steps.", default=None)
    num_inference_steps: int = flag("Sampler steps for validation images.", default=25)
    validation_epochs: int | None = flag(
        "Also validate every N epochs (an epoch = ceil(subject images / batch size) micro-batches).",
        default=None,
    )
    report_to: Literal["tensorboard", "none"] = flag("Where to log metrics.", default="tensorboard")
    logging_dir: str = flag("TensorBoard folder, relative to output_dir.", default="logs")
    with_prior_preservation: bool = flag(
        "DreamBooth prior preservation: also train on backbone-generated class images.", default=False
    )
    class_data_dir: str | None = flag(
        "Folder of class images; missing ones are generated there by the backbone.", default=None
    )
    class_prompt: str | None = flag("Prompt of the class images, e.g. 'a photo of a dog'.", default=None)
    num_class_images: int = flag(
        "Class images used for prior preservation (generated when the folder has fewer).", default=100
    )
    prior_loss_weight: float = flag("Weight of the prior-preservation loss.", default=1.0)
    sample_batch_size: int = flag("Batch size when generating class images.", default=4)
    checkpointing_steps: int = flag(
        "Save the training state (checkpoint-N/, for --resume_from_checkpoint) every N optimiser steps.",
        default=500,
    )
    checkpoints_total_limit: int | None = flag(
        "Keep only the newest N checkpoint folders.", default=None
    )
    resume_from_checkpoint: str | None = flag(
        "Resume from a checkpoint folder (a path, or a checkpoint-N name inside output_dir), or "
        "'latest' (starts fresh when output_dir has none).",
        default=None,
    )
    use_8bit_adam: bool = flag("Use bitsandbytes' 8-bit AdamW (pip install bitsandbytes).", default=False)
    allow_tf32: bool = flag("Allow TF32 matmuls on Ampere+ GPUs (no effect on CPU).", default=False)
    local_rank: int = flag(
        "Set by torch.distributed.launch; ignored (accelerate reads LOCAL_RANK itself).", default=-1
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = {
            "train_batch_size": self.train_batch_size,
            "num_train_epochs": self.num_train_epochs,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_validation_images": self.num_validation_images,
            "num_inference_steps": self.num_inference_steps,
            "num_class_images": self.num_class_images,
            "sample_batch_size": self.sample_batch_size,
            "checkpointing_steps": self.checkpointing_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}.")
        for name in ("max_train_steps", "validation_steps", "validation_epochs", "checkpoints_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be >= 1 when given, got {value}.")
        for name in ("learning_rate", "text_encoder_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"--{name} must be a positive number, got {value}.")
        if self.train_text_encoder_ti:
            check_new_token_settings(self.token_abstraction, self.num_new_tokens_per_abstraction,
                                     self.train_text_encoder_ti_frac, self.instance_prompt)
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"--lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}.")
        check_lora_settings(self.rank, self.lora_dropout)
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"--snr_gamma must be > 0 when given, got {self.snr_gamma}.")
        if self.noise_offset < 0:
            raise ConfigError(f"--noise_offset must be >= 0, got {self.noise_offset}.")
        for name in ("validation_steps", "validation_epochs"):
            if getattr(self, name) is not None and not self.validation_prompt:
                raise ConfigError(f"--{name} needs --validation_prompt: say what to render.")
        if not (self.prior_loss_weight >= 0 and math.isfinite(self.prior_loss_weight)):
            raise ConfigError(f"--prior_loss_weight must be >= 0, got {self.prior_loss_weight}.")
        if self.resume_from_checkpoint is not None and not self.resume_from_checkpoint.strip():
            raise ConfigError("--resume_from_checkpoint is empty; pass a checkpoint folder or 'latest'.")
        self._check_prior_preservation()

    def _check_prior_preservation(self) -> None:
        if self.with_prior_preservation:
            if not self.class_data_dir:
                raise ConfigError(
                    "--with_prior_preservation needs --class_data_dir: a folder for the class images "
                    "(missing ones are generated there), e.g. --class_data_dir ./class-dog."
                )
            if not self.class_prompt or not self.class_prompt.strip():
                raise ConfigError(
                    "--with_prior_preservation needs --class_prompt naming the class without the "
                    "subject token, e.g. --class_prompt 'a photo of a dog'."
                )
            return
        unused = [name for name in ("class_data_dir", "class_prompt") if getattr(self, name)]
        if unused:
            flags = " and ".join(f"--{name}" for name in unused)
            warnings.warn(
                f"{flags} given without --with_prior_preservation: ignored. Add "
                "--with_prior_preservation to train with class images.",
                UserWarning,
                stacklevel=3,
            )

    @property
    def new_tokens(self) -> NewTokens | None:
        """The pivotal-tuning tokens of this run (``None`` without ``--train_text_encoder_ti``)."""
        if not self.train_text_encoder_ti:
            return None
        return NewTokens.make(self.token_abstraction, self.num_new_tokens_per_abstraction)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the resolved configuration as JSON (kept next to the run's outputs)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path
