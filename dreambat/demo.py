"""The end-to-end demo the README's main command runs, on bundled data and a tiny backbone.

Everything it needs ships in ``assets/`` or is built here, so it runs offline on a laptop CPU:
the full BAT pipeline (surrogate -> ALBAT scores -> selection -> γ-mixture training -> samples),
a plain DreamBooth-LoRA baseline with the same steps, and DINO / CLIP-I / CLIP-T for both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .albat.manifest import read_manifest
from .backbone.tiny import write_tiny_backbone
from .bat.config import BatConfig
from .bat.pipeline import run_bat
from .config import TrainConfig
from .data.shards import ShardReader
from .grid import image_grid
from .synthetic import VOCABULARY

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEMO_SUBJECT_DIR = ASSETS_DIR / "subject"
DEMO_SHARDS = str(ASSETS_DIR / "backbone" / "shard-00000.tar")
DEMO_INSTANCE_PROMPT = "a photo of sks star"
DEMO_CLASS_NOUN = "star"
DEMO_VALIDATION_PROMPT = "a photo of sks star on a green background"
BACKBONE_PREVIEW_NAME = "backbone_preview.png"
SELECTION_PREVIEW_NAME = "selection_preview.png"
DEMO_KEEP = 60
DEMO_GAMMA = 0.5
DEMO_EVAL_PROMPTS = 4
DEMO_EVAL_IMAGES = 2


def preview_backbone_data(urls: str, path: Path, n: int = 8) -> str:
    """Read every candidate in ``urls``, save a captioned grid of the first ``n``; return the stats line."""
    reader = ShardReader(urls)
    first = []
    for sample in reader:
        if len(first) < n:
            first.append(sample)
    grid = image_grid(
        [[s.image] for s in first], row_labels=[s.caption for s in first], cell_size=64, label_width=320
    )
    grid.save(path)
    return reader.stats.summary()


def preview_selection(manifest: Path, urls: str, path: Path, n: int = 6) -> list:
    """Grid of the n highest- and n lowest-scoring candidates with their captions and Z."""
    records = sorted((r for r in read_manifest(manifest) if r.score is not None), key=lambda r: -r.score)
    shown = records[:n] + records[-n:]
    wanted = {r.key for r in shown}
    images = {s.key: s.image for s in ShardReader(urls) if s.key in wanted}
    labels = [f"{'kept' if r.selected else 'dropped'} Z={r.score:+.2e}: {r.caption}" for r in shown]
    image_grid([[images[r.key]] for r in shown], row_labels=labels, cell_size=64, label_width=420).save(path)
    return records


def demo_train_config(backbone: Path, output_dir: Path, *, steps: int, seed: int, inference_steps: int) -> TrainConfig:
    """The DreamBooth settings both demo runs share (64 px, rank 8, batch 4)."""
    return TrainConfig(
        pretrained_model_name_or_path=str(backbone),
        instance_data_dir=str(DEMO_SUBJECT_DIR),
        instance_prompt=DEMO_INSTANCE_PROMPT,
        output_dir=str(output_dir),
        seed=seed,
        resolution=64,
        random_flip=True,
        train_batch_size=4,
        max_train_steps=steps,
        learning_rate=1e-3,
        rank=8,
        checkpointing_steps=max(steps // 2, 1),
        checkpoints_total_limit=1,
        validation_prompt=DEMO_VALIDATION_PROMPT,
        num_validation_images=4,
        num_inference_steps=inference_steps,
    )


def evaluate(backbone: Path, evaluators, methods: dict[str, Path], output_dir: Path, *, seed: int, inference_steps: int):
    """DreamBench-style DINO / CLIP-I / CLIP-T of each method on the demo subject."""
    from .eval.config import DreamBenchConfig, EncoderSettings, GenerationSettings, Subject, build_methods
    from .eval.runner import run_dreambench

    config = DreamBenchConfig(
        pretrained_model_name_or_path=str(backbone),
        methods=build_methods(list(methods.values()), list(methods)),
        subjects=[Subject("sks-star", DEMO_SUBJECT_DIR, DEMO_CLASS_NOUN)],
        output_dir=output_dir,
        generation=GenerationSettings(num_images=DEMO_EVAL_IMAGES, seed=seed, num_inference_steps=inference_steps,
                                      num_prompts=DEMO_EVAL_PROMPTS, resolution=64),
        encoders=EncoderSettings(dino_model=str(evaluators.dino_model), clip_model=str(evaluators.clip_model),
                                 clip_pretrained=str(evaluators.clip_pretrained)),
    )
    return run_dreambench(config)


def run_demo(
    output_dir: str | Path = "outputs/demo",
    *,
    steps: int = 150,
    seed: int = 0,
    max_candidates: int | None = None,
    inference_steps: int = 20,
) -> dict[str, Path]:
    """Tiny backbone -> bundled data -> BAT LoRA and a DreamBooth baseline -> samples and metrics.

    Returns:
        Name -> path of every output, which is also printed.
    """
    from .eval.tiny import write_tiny_evaluators

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    backbone = write_tiny_backbone(output_dir / "backbone", "demo", seed=seed, words=VOCABULARY)
    evaluators = write_tiny_evaluators(output_dir / "evaluators", seed=seed)
    logger.info("[1/5] tiny backbone and evaluators ready in %s (%.1fs)", output_dir, time.perf_counter() - started)

    started = time.perf_counter()
    preview = output_dir / BACKBONE_PREVIEW_NAME
    summary = preview_backbone_data(DEMO_SHARDS, preview)
    logger.info("[2/5] backbone shard: %s (%.1fs)", summary, time.perf_counter() - started)

    started = time.perf_counter()
    bat_dir = output_dir / "bat"
    bat = BatConfig(
        selection="albat", backbone_shards=[DEMO_SHARDS], max_candidates=max_candidates,
        surrogate_steps=max(steps * 2 // 3, 1), num_score_timesteps=2, score_batch_size=16,
        num_backbone_samples=DEMO_KEEP, augmentation_ratio=DEMO_GAMMA,
    )
    result = run_bat(demo_train_config(backbone, bat_dir, steps=steps, seed=seed, inference_steps=inference_steps), bat)
    ranked = preview_selection(result.manifest_path, DEMO_SHARDS, output_dir / SELECTION_PREVIEW_NAME)
    report = result.report
    logger.info(
        "[3/5] BAT: %d candidates scored, %d with Z > 0, kept %d; backbone share of training %.2f (%.1fs)",
        len(ranked), sum(r.score > 0 for r in ranked), report["counts"]["selected"],
        report["gamma"]["measured_backbone_share"] or 0.0, time.perf_counter() - started,
    )

    started = time.perf_counter()
    baseline_dir = output_dir / "dreambooth"
    run_bat(demo_train_config(backbone, baseline_dir, steps=steps, seed=seed, inference_steps=inference_steps),
            BatConfig(selection="none"))
    logger.info("[4/5] DreamBooth-LoRA baseline, same steps (%.1fs)", time.perf_counter() - started)

    started = time.perf_counter()
    scores = evaluate(backbone, evaluators, {"dreambooth": baseline_dir, "bat": bat_dir}, output_dir / "eval",
                      seed=seed, inference_steps=inference_steps)
    logger.info("[5/5] DINO / CLIP-I / CLIP-T with the tiny evaluators (%.1fs)", time.perf_counter() - started)
    print("\n" + scores.paths["md"].read_text())

    outputs = {
        "backbone": backbone,
        "backbone preview": preview,
        "BAT LoRA weights": result.lora_path,
        "BAT samples (base vs LoRA)": result.grid_path,
        "BAT model card": bat_dir / "README.md",
        "BAT report": result.report_path,
        "selection manifest": result.manifest_path,
        "selection preview": output_dir / SELECTION_PREVIEW_NAME,
        "surrogate LoRA": bat_dir / "surrogate",
        "DreamBooth baseline": baseline_dir,
        "TensorBoard logs": bat_dir / "logs",
        "metrics table": scores.paths["md"],
        "metrics chart": scores.paths["png"],
        "evaluation images": output_dir / "eval",
    }
    print("Demo finished. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<28} {path}")
    return outputs
