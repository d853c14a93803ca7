"""Names and defaults of the evaluation, importable without torch (the CLI parsers need them)."""

from __future__ import annotations

# Evaluators (loaded from local folders or the Hugging Face cache; never downloaded).
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "openai"

METRIC_NAMES: tuple[str, ...] = ("dino", "clip_i", "clip_t")
METRIC_LABELS: dict[str, str] = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}

BASE_METHOD = "base"
REAL_IMAGES = "real_images"  # the measured real-vs-real row of the tables; not a method name
MAX_IMAGES_PER_PROMPT = 1000  # seeds are seed + 1000 * prompt_index + image_index

SCHEDULER_NAMES: tuple[str, ...] = ("ddim", "ddpm", "dpm", "euler", "euler_a", "pndm")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
GRID_LAYOUTS: tuple[str, ...] = ("prompts_x_seeds", "methods_x_prompts")
