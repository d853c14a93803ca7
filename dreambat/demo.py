"""The end-to-end demo the README's main command runs, on bundled data and a tiny backbone.

Everything it needs ships in ``assets/`` or is built here, so it runs offline on a laptop CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .backbone.tiny import write_tiny_backbone
from .config import TrainConfig
from .data.shards import ShardReader
from .albat.config import ScoreConfig
from .albat.manifest import read_manifest
from .albat.run import run_scoring
from .grid import image_grid
from .synthetic import VOCABULARY

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEMO_SUBJECT_DIR = ASSETS_DIR / "subject"
DEMO_SHARDS = str(ASSETS_DIR / "backbone" / "shard-00000.tar")
DEMO_INSTANCE_PROMPT = "a photo of sks star"
DEMO_VALIDATION_PROMPT = "a photo of sks star on a green background"
BACKBONE_PREVIEW_NAME = "backbone_preview.png"
SELECTION_PREVIEW_NAME = "selection_preview.png"
DEMO_KEEP = 60


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
    wanted = {r.key: r for r in records[:n] + records[-n:]}
    images = {s.key: s.image for s in ShardReader(urls) if s.key in wanted}
    shown = records[:n] + records[-n:]
    labels = [f"{'kept' if r.selected else 'dropped'} Z={r.score:+.2e}: {r.caption}" for r in shown]
    image_grid([[images[r.key]] for r in shown], row_labels=labels, cell_size=64, label_width=420).save(path)
    return records


def run_demo(
    output_dir: str | Path = "outputs/demo", *, steps: int = 150, seed: int = 0, max_candidates: int | None = None
) -> dict[str, Path]:
    """Tiny backbone -> bundled data -> DreamBooth LoRA -> ALBAT scores of the bundled shard.

    The trained LoRA doubles as the ALBAT surrogate: every candidate of the bundled shard is
    scored by its influence on the subject loss and the top ``DEMO_KEEP`` are selected.

    Returns:
        Name -> path of every output, which is also printed.
    """
    from .training.dreambooth import run_dreambooth

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    backbone = write_tiny_backbone(output_dir / "backbone", "demo", seed=seed, words=VOCABULARY)
    logger.info("[1/4] tiny backbone ready at %s (%.1fs)", backbone, time.perf_counter() - started)

    started = time.perf_counter()
    preview = output_dir / BACKBONE_PREVIEW_NAME
    summary = preview_backbone_data(DEMO_SHARDS, preview)
    logger.info("[2/4] backbone shard: %s (%.1fs)", summary, time.perf_counter() - started)

    started = time.perf_counter()
    lora_dir = output_dir / "lora"
    config = TrainConfig(
        pretrained_model_name_or_path=str(backbone),
        instance_data_dir=str(DEMO_SUBJECT_DIR),
        instance_prompt=DEMO_INSTANCE_PROMPT,
        output_dir=str(lora_dir),
        seed=seed,
        resolution=64,
        random_flip=True,
        train_batch_size=4,
        max_train_steps=steps,
        learning_rate=1e-3,
        rank=8,
        validation_prompt=DEMO_VALIDATION_PROMPT,
        num_validation_images=4,
        num_inference_steps=20,
    )
    result = run_dreambooth(config)
    losses = result.state.losses
    logger.info(
        "[3/4] DreamBooth-LoRA: %d steps, loss %.4f -> %.4f (%.1fs)",
        len(losses), losses[0], sum(losses[-10:]) / len(losses[-10:]), time.perf_counter() - started,
    )
    started = time.perf_counter()
    scores_dir = output_dir / "scores"
    scoring = run_scoring(
        ScoreConfig(
            pretrained_model_name_or_path=str(backbone),
            surrogate_lora=str(lora_dir),
            instance_data_dir=str(DEMO_SUBJECT_DIR),
            instance_prompt=DEMO_INSTANCE_PROMPT,
            backbone_shards=[DEMO_SHARDS],
            output_dir=str(scores_dir),
            num_score_timesteps=2,
            max_candidates=max_candidates,
            score_batch_size=16,
            num_backbone_samples=DEMO_KEEP,
        )
    )
    ranked = preview_selection(scoring.manifest_path, DEMO_SHARDS, output_dir / SELECTION_PREVIEW_NAME)
    logger.info(
        "[4/4] ALBAT scores with the LoRA as surrogate: %d candidates, %d with Z > 0, kept %d (%.1fs)",
        len(ranked), sum(r.score > 0 for r in ranked), scoring.report["counts"]["selected"],
        time.perf_counter() - started,
    )
    outputs = {
        "backbone": backbone,
        "backbone preview": preview,
        "LoRA weights": result.lora_path,
        "samples (base vs LoRA)": result.grid_path,
        "model card": result.model_card_path,
        "resolved config": lora_dir / "dreambat_config.json",
        "TensorBoard logs": lora_dir / "logs",
        "selection manifest": scoring.manifest_path,
        "score report": scoring.report_path,
        "selection preview": output_dir / SELECTION_PREVIEW_NAME,
    }
    print("\nDemo finished. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<24} {path}")
    return outputs
