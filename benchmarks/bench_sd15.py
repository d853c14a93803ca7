"""The whole BAT pipeline at Stable Diffusion 1.5's or SDXL's real shape, on whatever machine this is.

Writes a backbone of the real shape (``dreambat make-backbone --size sd15`` or ``--size sdxl``: the
released configs, the real CLIP tokenizer(s), random weights), then runs ``train_dreambooth_bat.py``
on it with the memory savers a user would turn on (``--gradient_checkpointing``, ``--mixed_precision``,
``--train_text_encoder`` on SD-1.5) and a few steps of every stage: surrogate, ALBAT scoring,
selection, final training, save, validation. Finally the saved LoRA is loaded with the stock
pipeline's ``load_lora_weights`` (``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``) and one
image is generated. Random weights say nothing about quality; this measures that every path works
at the real size, and what it costs.

    python -m benchmarks.bench_sd15 --resolution 128
    python -m benchmarks.bench_sd15 --size sdxl --resolution 128 --mixed_precision no --no_validation \
        --out benchmarks/results/sdxl-e2e-fp32.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._measure import REPO, git_head, log, machine_info


def _count_tensors(path: Path) -> dict[str, int]:
    from safetensors.torch import load_file

    keys = list(load_file(path))
    return {part: sum(k.startswith(part + ".") for k in keys) for part in ("unet", "text_encoder", "text_encoder_2")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd15", "sdxl"), default="sd15", help="the backbone's shape")
    p.add_argument("--work_dir", type=Path, default=None, help="default: outputs/<size>")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="surrogate and final training steps")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--mixed_precision", default="bf16")
    p.add_argument("--no_validation", action="store_true",
                   help="no validation grid (it loads a second copy of the backbone: SDXL's does not fit twice in 24 GB)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sd15-e2e.json")
    args = p.parse_args()
    args.work_dir = args.work_dir or REPO / "outputs" / args.size
    sdxl = args.size == "sdxl"
    backbone = args.work_dir / "backbone"
    started = time.perf_counter()
    if not (backbone / "model_index.json").is_file():
        subprocess.run([sys.executable, "-m", "dreambat", "make-backbone", str(backbone), "--size", args.size],
                       check=True)
    make_seconds = time.perf_counter() - started
    out = args.work_dir / f"run-{args.resolution}"
    flags = [
        "--pretrained_model_name_or_path", str(backbone), "--instance_data_dir", str(REPO / "assets" / "subject"),
        "--instance_prompt", "a photo of sks dog", "--output_dir", str(out), "--overwrite_output_dir",
        "--resolution", str(args.resolution), "--train_batch_size", "1", "--max_train_steps", str(args.steps),
        "--surrogate_steps", str(args.steps), "--rank", "4", "--learning_rate", "1e-4", "--seed", "0",
        "--gradient_checkpointing", "--mixed_precision", args.mixed_precision,
        *([] if sdxl else ["--train_text_encoder"]),  # SDXL: UNet LoRA only, for now
        "--backbone_shards", str(REPO / "assets" / "backbone" / "shard-00000.tar"),
        "--max_candidates", str(args.candidates), "--num_score_timesteps", "2", "--reference_draws", "1",
        "--score_batch_size", "2", "--num_backbone_samples", "4", "--keep_nonpositive",
        *([] if args.no_validation else ["--validation_prompt", "a photo of sks dog on the beach",
                                         "--num_validation_images", "1"]),
        "--num_inference_steps", "2", "--checkpointing_steps", "1", "--checkpoints_total_limit", "1",
        "--report_to", "none",
    ]
    env = {**os.environ, "DREAMBAT_PROGRESS": "log"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "train_dreambooth_bat.py", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True)
    run_seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB, largest child
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stderr[-4000:]}")
    report = json.loads((out / "bat_report.json").read_text())

    started = time.perf_counter()
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        pipe = StableDiffusionXLPipeline.from_pretrained(backbone, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(backbone, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(out)
    image = pipe("a photo of sks dog", num_inference_steps=2, height=args.resolution, width=args.resolution,
                 generator=torch.Generator().manual_seed(0)).images[0]
    load_seconds = time.perf_counter() - started
    result = {
        "command": "python -m benchmarks.bench_sd15 " + " ".join(sys.argv[1:]), "commit": git_head(),
        "date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "size": args.size, "resolution": args.resolution,
        "make_backbone_seconds": round(make_seconds, 1), "run_seconds": round(run_seconds, 1),
        "run_peak_rss_gb": round(peak_gb, 2),
        "stage_seconds": report["timings"], "stages": report["stages"],
        "lora_tensors": _count_tensors(out / "pytorch_lora_weights.safetensors"),
        "curvature": {k: report["curvature"][k] for k in ("strategy", "n_ref", "num_params", "reference_rows_mb")
                      if report.get("curvature") and k in report["curvature"]},
        "load_lora_weights_and_generate_seconds": round(load_seconds, 1), "image_size": image.size,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps({k: result[k] for k in ("run_seconds", "run_peak_rss_gb", "stages")}))


if __name__ == "__main__":
    main()
