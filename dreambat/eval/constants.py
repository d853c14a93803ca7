"""Names and defaults of the evaluation, importable without torch (the CLI parsers need them).

Each default is written here once; the settings dataclasses, the flags of ``dreambat eval`` /
``dreambat grid`` and ``dreambat score --selection clip`` read it from here.
"""

from __future__ import annotations

# Evaluators (loaded from local folders or the Hugging Face cache; never downloaded).
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_EVAL_BATCH_SIZE = 32  # images per evaluator forward

METRIC_NAMES: tuple[str, ...] = ("dino", "clip_i", "clip_t")
# DreamBooth's prior preservation and diversity: on whenever --num_prior_images > 0 (not picked by
# --metrics), both from DINO embeddings of their own class-prompt and subject-prompt images.
PRIOR_METRIC_NAMES: tuple[str, ...] = ("pres", "div")
METRIC_LABELS: dict[str, str] = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES ↓",
                                 "div": "DIV"}

BASE_METHOD = "base"
REAL_IMAGES = "real_images"  # the measured real-vs-real row of the tables; not a method name
MAX_IMAGES_PER_PROMPT = 1000  # seeds are seed + 1000 * prompt_index + image_index

SCHEDULER_NAMES: tuple[str, ...] = ("ddim", "ddpm", "dpm", "euler", "euler_a", "pndm")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"
DEFAULT_DEVICE = "auto"  # CUDA if available, else CPU

DEFAULT_GRID_LAYOUT = "prompts_x_seeds"
GRID_LAYOUTS: tuple[str, ...] = (DEFAULT_GRID_LAYOUT, "methods_x_prompts")
GRID_INFERENCE_STEPS = 25  # a sample grid is a quick look; DreamBench samples with GenerationSettings' 50
