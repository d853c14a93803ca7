"""Constants shared across dreambat: file names of a run, data formats, defaults."""

from __future__ import annotations

# Subject photos: extensions compared case-insensitively.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

# img2dataset / LAION-style webdataset shards: image keys tried in this order.
SHARD_IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
SHARD_CAPTION_KEY = "txt"
SHARD_METADATA_KEY = "json"

# Files of a run's output_dir (the README's "Outputs of a run" table).
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
SELECTION_MANIFEST_NAME = "selection.jsonl"
BAT_REPORT_NAME = "bat_report.json"
RESOLVED_CONFIG_NAME = "dreambat_config.json"
MODEL_CARD_NAME = "README.md"
VALIDATION_GRID_NAME = "validation_grid.png"
CHECKPOINT_PREFIX = "checkpoint-"  # output_dir/checkpoint-N: accelerate state after N optimiser steps

# Stable Diffusion attention projections that DreamBooth-LoRA adapts.
UNET_LORA_TARGET_MODULES: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_ENCODER_LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")

# CLIP's tokenizer context length; a locally built CLIPTokenizer must be told.
CLIP_MODEL_MAX_LENGTH = 77

# A run warns when its ranking's estimated test-retest reliability (Spearman) is below this.
RELIABILITY_WARNING = 0.8

# Files of a scoring run (``dreambat score``, or stage 3 of a BAT run).
SCORE_REPORT_NAME = "score_report.json"
SCORE_CONFIG_NAME = "score_config.json"
# A BAT run's surrogate LoRA (stage 1) is trained into output_dir/surrogate.
SURROGATE_DIR = "surrogate"
