"""The ``memory`` part of ``bench_scoring.py``: peak RSS of ``dreambat.scoring.run.run_scoring``
over webdataset shards for several candidate counts, each count in a fresh subprocess."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._measure import RssSampler, log, measured


def part_memory(args, workdir: Path) -> dict:
    """Peak RSS of the streaming scoring path per candidate count, each count in a fresh
    ``python -m benchmarks.bench_scoring --_memory_worker`` subprocess (see :func:`memory_worker`)."""
    import torch

    from dreambat.backbone.tiny import build_tiny_components, get_tiny_size, write_tiny_backbone
    from dreambat.data.shard_writer import write_shards
    from dreambat.lora import add_unet_lora, save_lora
    from dreambat_world.synthetic import backbone_records

    counts = sorted(args.memory_candidates)
    size, K = args.memory_size, args.memory_timesteps
    resolution = get_tiny_size(size).resolution
    folder = write_tiny_backbone(workdir / f"tiny-sd-{size}", size, seed=0)
    unet = build_tiny_components(size, seed=0)["unet"]
    torch.manual_seed(0)
    add_unet_lora(unet, rank=args.rank, init_lora_weights=False)
    surrogate = save_lora(workdir / "surrogate", unet)
    del unet
    started = time.perf_counter()
    shards = write_shards(backbone_records(counts[-1], seed=1, size=resolution),
                          workdir / "shards" / "shard-{:05d}.tar", max_per_shard=1000)
    shard_seconds = time.perf_counter() - started
    pattern = str(workdir / "shards" / f"shard-{{00000..{len(shards) - 1:05d}}}.tar")
    log(f"[memory] wrote {counts[-1]} candidates in {len(shards)} shards ({shard_seconds:.1f}s)")

    runs = {}
    for count in counts:
        command = [
            sys.executable, "-m", "benchmarks.bench_scoring", "--_memory_worker",
            "--size", size, "--num_timesteps", str(K), "--batch_size", str(args.batch_size),
            "--_backbone", str(folder), "--_surrogate", str(surrogate), "--_shards", pattern,
            "--_count", str(count), "--_outdir", str(workdir / f"scores-{count}"),
            *(["--threads", str(args.threads)] if args.threads else []),
        ]

        def run_worker(command=command, count=count):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory worker for {count} candidates failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        runs[str(count)] = measured(args, f"memory/{count}", run_worker)
        log(f"[memory] {count} candidates: peak RSS {runs[str(count)]['ru_maxrss_mb']:.1f} MB")

    low, high = runs[str(counts[0])], runs[str(counts[-1])]
    for count in counts:
        runs[str(count)]["seconds_per_1k_candidates"] = round(
            1000 * runs[str(count)]["timings"]["score"] / runs[str(count)]["scored"], 2)
    growth = 100.0 * (high["ru_maxrss_mb"] - low["ru_maxrss_mb"]) / low["ru_maxrss_mb"]
    sampled_growth = 100.0 * (high["sampled_peak_rss_mb"] - low["sampled_peak_rss_mb"]) / low["sampled_peak_rss_mb"]
    return {
        "what": (
            "Peak RSS (getrusage ru_maxrss of a fresh subprocess) of dreambat.scoring.run.run_scoring: "
            "load backbone + surrogate LoRA, reference gradients of 5 subject images, stream the "
            "candidates from webdataset shards (ShardReader, max_candidates), score with the fast "
            "path, write and merge the manifest, select (Z > 0)."
        ),
        "size": size, "num_timesteps": K, "batch_size": args.batch_size, "rank": args.rank,
        "shards": len(shards), "shard_write_seconds": round(shard_seconds, 2),
        "runs": runs,
        "peak_rss_growth_percent": round(growth, 2),
        "sampled_peak_rss_growth_percent": round(sampled_growth, 2),
        "note": (
            "ru_maxrss is the process's true peak; about 800 MB of it is the imports (torch, "
            "diffusers, transformers) before run_scoring starts (see ru_maxrss_before_run_scoring_mb). "
            "sampled_peak_rss_mb samples RSS every 20 ms during run_scoring and can miss short spikes."
        ),
        "target_growth_le_10_percent": {"target": "<= 10%", "value": round(growth, 2), "met": growth <= 10.0},
    }


def memory_worker(args, subject_dir: Path, instance_prompt: str) -> None:
    """Fresh process: run_scoring over the first ``--_count`` candidates; print one JSON line."""
    import torch  # (imports counted in the baseline)

    from dreambat.scoring.config import ScoreSettings
    from dreambat.scoring.run import run_scoring

    if args.threads:
        torch.set_num_threads(args.threads)
    maxrss_before_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = ScoreSettings.from_flags(
        pretrained_model_name_or_path=args._backbone, surrogate_lora=args._surrogate,
        instance_data_dir=str(subject_dir), instance_prompt=instance_prompt,
        backbone_shards=[args._shards], output_dir=args._outdir, num_score_timesteps=args.num_timesteps,
        score_batch_size=args.batch_size, max_candidates=args._count, curvature="exact",
        overwrite_manifest=True,
    )
    with RssSampler(interval_s=0.02) as rss:
        started = time.perf_counter()
        result = run_scoring(config, show_progress=False)
        seconds = time.perf_counter() - started
    report = result.report
    scored = report["counts"]["scored_this_run"]
    print(json.dumps({
        "candidates": args._count,
        "scored": scored,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sampled_peak_rss_mb": rss.peak / 2**20,
        "ru_maxrss_before_run_scoring_mb": maxrss_before_run,
        "rss_after_imports_mb": rss.base / 2**20,
        "sampled_peak_minus_after_imports_mb": rss.working_mb,
        "rss_at_end_mb": rss.process.memory_info().rss / 2**20,
        "run_scoring_seconds": round(seconds, 2),
        "timings": {k: round(v, 3) for k, v in report["timings"].items()},
        "candidates_per_s_scoring": round(scored / report["timings"]["score"], 2),
    }))
