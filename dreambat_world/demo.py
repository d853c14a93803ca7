"""The end-to-end demo the README's main command runs: the mini-world's pretrained backbone,
one of its held-out subjects and a bundled shard of its pre-training data.

Everything it needs is committed under ``assets/world/`` (a 32 px Stable Diffusion pretrained by
``scripts/pretrain_world_backbone.py``, its evaluators, subject photos and a 500-image shard), so
it runs offline on a laptop CPU: the full BAT pipeline (surrogate -> ALBAT scores -> selection ->
γ-mixture training -> samples), a plain DreamBooth-LoRA baseline with the same steps, and the
world's metrics for both (held-out denoising loss, DINO, CLIP-I, CLIP-T, attribute fidelity, and
DreamBooth's PRES / DIV with the class-prompt drift).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from dreambat.albat import read_manifest
from dreambat.data.records import record_caption
from dreambat.bat.config import BatConfig, BatSettings
from dreambat.bat.pipeline import run_bat
from dreambat.data.shards import ShardReader
from dreambat.errors import ModelNotFoundError
from dreambat.image_grid import image_grid
from dreambat.scoring.config import PoolConfig, ScoringConfig, SelectionConfig
from dreambat.training.config import TrainConfig

from .data import ASSETS_DIR as WORLD_DIR
from .data import BACKBONE_DIR, BUNDLED_SHARD, SUBJECTS_DIR
from .subjects import WORLD_DEMO_SUBJECT

logger = logging.getLogger(__name__)

DEMO_BACKBONE = WORLD_DIR / BACKBONE_DIR
DEMO_SUBJECT = WORLD_DEMO_SUBJECT
DEMO_SUBJECT_DIR = WORLD_DIR / SUBJECTS_DIR / DEMO_SUBJECT.name / "train"
DEMO_SHARDS = str(WORLD_DIR / BUNDLED_SHARD)
DEMO_CLASS_NOUN = DEMO_SUBJECT.class_word
DEMO_IDENTIFIER = "TOK"
"""The subject's identifier: new tokens trained by pivotal tuning (``--train_text_encoder_ti``). To the
world's frozen text encoder "sks" reads like the article "a" (BENCHMARKS, issue 27)."""
DEMO_INSTANCE_PROMPT = f"a photo of {DEMO_IDENTIFIER} {DEMO_CLASS_NOUN}"
DEMO_VALIDATION_PROMPT = f"a {DEMO_IDENTIFIER} {DEMO_CLASS_NOUN} on a green background"
BACKBONE_PREVIEW_NAME = "backbone_preview.png"
SELECTION_PREVIEW_NAME = "selection_preview.png"
DEMO_PHOTOS = 1
"""Subject photos the demo trains on: one photo trained for hundreds of steps is the regime where
DreamBooth overfits and backbone data earns its place (BENCHMARKS, issue 27: at one photo and equal
likeness, backbone images keep prompt fidelity 0.02-0.04 higher, and they cut the rise of the held-out
loss by about two thirds)."""
DEMO_STEPS = 800
"""Final-training steps of both demo LoRAs: on the world, DreamBooth-LoRA needs several hundred
steps before its samples show the subject (the step curve in BENCHMARKS.md); 200 did not."""
DEMO_SURROGATE_STEPS = 200
DEMO_KEEP = 60
DEMO_GAMMA = 0.5
DEMO_EVAL_PROMPTS = 8
DEMO_EVAL_IMAGES = 2
DEMO_GUIDANCE = 3.0


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


def preview_selection(manifest: Path, urls: str, path: Path, n: int = 6, *, score: str = "Z") -> list:
    """Grid of the n highest- and n lowest-scoring candidates under the score that selected them
    (``score`` names it in the labels), with their gradient norm and caption."""
    records = sorted((r for r in read_manifest(manifest) if r.score is not None), key=lambda r: -r.score)
    shown = records[:n] + records[-n:]
    wanted = {r.key for r in shown}
    images = {s.key: s.image for s in ShardReader(urls) if s.key in wanted}
    labels = [f"{'kept' if r.selected else 'dropped'} {score}={r.score:+.2e}"
              + (f" |g|={r.grad_norm:.2g}" if r.grad_norm is not None else "") + f": {record_caption(r)}"
              for r in shown]
    image_grid([[images[r.key]] for r in shown], row_labels=labels, cell_size=64, label_width=420).save(path)
    return records


def demo_photos(output_dir: Path, n: int = DEMO_PHOTOS) -> Path:
    """A folder under ``output_dir`` holding the subject's first ``n`` training photos."""
    folder = output_dir / "subject_photos"
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(DEMO_SUBJECT_DIR.glob("*.png"))[:n]:
        if not (folder / photo.name).is_file():
            shutil.copyfile(photo, folder / photo.name)
    return folder


def demo_train_config(backbone: Path, output_dir: Path, *, steps: int, seed: int, inference_steps: int,
                      photos: Path = DEMO_SUBJECT_DIR) -> TrainConfig:
    """The DreamBooth settings both demo runs share (the backbone's 32 px, rank 8, batch 4, pivotal tuning)."""
    return TrainConfig(
        pretrained_model_name_or_path=str(backbone),
        instance_data_dir=str(photos),
        instance_prompt=DEMO_INSTANCE_PROMPT,
        output_dir=str(output_dir),
        seed=seed,
        resolution=32,
        random_flip=True,
        train_batch_size=4,
        max_train_steps=steps,
        learning_rate=1e-3,
        rank=8,
        train_text_encoder_ti=True,
        token_abstraction=DEMO_IDENTIFIER,
        checkpointing_steps=max(steps // 2, 1),
        checkpoints_total_limit=1,
        validation_prompt=DEMO_VALIDATION_PROMPT,
        num_validation_images=4,
        num_inference_steps=inference_steps,
    )


def run_demo(
    output_dir: str | Path = "outputs/demo",
    *,
    steps: int = DEMO_STEPS,
    seed: int = 0,
    max_candidates: int | None = None,
    inference_steps: int = 25,
    num_prompts: int = DEMO_EVAL_PROMPTS,
) -> dict[str, Path]:
    """World backbone -> bundled data -> BAT LoRA and a DreamBooth baseline -> samples and metrics.

    Returns:
        Name -> path of every output, which is also printed.
    """
    from .evaluators import world_evaluators
    from .metrics import evaluate_world, world_table

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (DEMO_BACKBONE / "model_index.json").is_file():
        raise ModelNotFoundError(f"The world backbone is missing from {DEMO_BACKBONE}; restore assets/world/ "
                                 "from git (or rebuild it with scripts/pretrain_world_backbone.py).")
    world_evaluators()  # fails now, not after training, when an evaluator is missing
    photos = demo_photos(output_dir)
    logger.info("[1/5] world backbone %s, subject '%s' (%d of its %d photos), evaluators ready (%.1fs)",
                DEMO_BACKBONE, DEMO_SUBJECT.name, len(list(photos.glob("*.png"))),
                len(list(DEMO_SUBJECT_DIR.glob("*.png"))), time.perf_counter() - started)

    started = time.perf_counter()
    preview = output_dir / BACKBONE_PREVIEW_NAME
    summary = preview_backbone_data(DEMO_SHARDS, preview)
    logger.info("[2/5] backbone shard: %s (%.1fs)", summary, time.perf_counter() - started)

    started = time.perf_counter()
    bat_dir = output_dir / "bat"
    train = demo_train_config(DEMO_BACKBONE, bat_dir, steps=steps, seed=seed, inference_steps=inference_steps,
                              photos=photos)
    result = run_bat(BatSettings(
        train,
        PoolConfig(backbone_shards=[DEMO_SHARDS], max_candidates=max_candidates),
        ScoringConfig(score_batch_size=16),  # the library's reliable defaults
        SelectionConfig(selection="albat", num_backbone_samples=DEMO_KEEP),
        BatConfig(surrogate_steps=max(min(steps // 2, DEMO_SURROGATE_STEPS), 1), augmentation_ratio=DEMO_GAMMA),
    ))
    label = {"none": "Z", "candidate": "cos", "timestep": "cos/draw"}[ScoringConfig().score_normalization]
    ranked = preview_selection(result.manifest_path, DEMO_SHARDS, output_dir / SELECTION_PREVIEW_NAME, score=label)
    report = result.report
    reliability = report.get("reliability") or {}
    logger.info(
        "[3/5] BAT: %d candidates scored, %d with Z > 0, kept %d (ranking test-retest Spearman estimated at "
        "%s); backbone share of training %.2f (%.1fs)",
        len(ranked), sum(r.score > 0 for r in ranked), report["counts"]["selected"],
        f"{reliability['full_run']:.2f}" if reliability else "n/a",
        report["gamma"]["measured_backbone_share"] or 0.0, time.perf_counter() - started,
    )

    started = time.perf_counter()
    baseline_dir = output_dir / "dreambooth"
    run_bat(BatSettings(
        demo_train_config(DEMO_BACKBONE, baseline_dir, steps=steps, seed=seed, inference_steps=inference_steps,
                          photos=photos),
        selection=SelectionConfig(selection="none"),
    ))
    logger.info("[4/5] DreamBooth-LoRA baseline, same steps (%.1fs)", time.perf_counter() - started)

    started = time.perf_counter()
    eval_dir = output_dir / "eval"
    scores = evaluate_world(DEMO_BACKBONE, {"base": None, "dreambooth": baseline_dir, "bat": bat_dir},
                            [DEMO_SUBJECT.name], eval_dir, instance_prompt=f"a photo of {DEMO_IDENTIFIER} {{}}",
                            unique_token=DEMO_IDENTIFIER,
                            num_images=DEMO_EVAL_IMAGES, num_prompts=num_prompts,
                            num_inference_steps=inference_steps, guidance_scale=DEMO_GUIDANCE, seed=seed)
    table = world_table(scores)
    (eval_dir / "world_scores.md").write_text(table)
    logger.info("[5/5] held-out loss, DINO / CLIP-I / CLIP-T, attribute fidelity, PRES / DIV and class drift "
                "with the world's evaluators (%.1fs)", time.perf_counter() - started)
    print("\n" + table)

    outputs = {
        "backbone": DEMO_BACKBONE,
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
        "metrics table": eval_dir / "world_scores.md",
        "metrics (JSON)": eval_dir / "world_scores.json",
        "DreamBench chart": eval_dir / "dreambench" / "scores.png",
        "evaluation images": eval_dir / "dreambench",
    }
    print("Demo finished. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<28} {path}")
    return outputs
