#!/usr/bin/env python
"""ALBAT scoring throughput with one process vs two, on the mini-world backbone.

The same scoring job (``python -m dreambat score``: world backbone, a rank-4 surrogate LoRA with
non-zero weights, the demo subject's photos, the bundled 500-image world shard) runs as

* one process with 1 torch thread,
* one process with 2 torch threads (intra-op parallelism only),
* two processes with 1 thread each (``torchrun --nproc_per_node 2``; candidates are split by
  sample, each process writes a part manifest, the main process merges them).

For each: wall time of the whole command (start-up included), the scoring stage's own seconds
from ``score_report.json``, candidates/s of that stage, and whether the merged scores equal the
one-process scores (they must: scores do not depend on the split). Interference from other
processes is recorded for each run (see ``_measure.py``).

    python benchmarks/bench_processes.py --out benchmarks/results/processes.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._measure import REPO, git_head, log, machine_info, measured  # noqa: E402


CONFIGS = {  # name -> (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 1),
}


def make_surrogate(backbone: str, folder: Path, rank: int) -> Path:
    """A rank-``rank`` UNet LoRA with random non-zero weights (a fresh LoRA scores all zeros)."""
    import torch

    from dreambat.backbone.load import load_backbone
    from dreambat.lora import add_unet_lora, save_lora

    unet = load_backbone(backbone).unet
    torch.manual_seed(0)
    add_unet_lora(unet, rank=rank, init_lora_weights=False)
    return save_lora(folder, unet)


def score_command(args, processes: int, surrogate: Path, out: Path) -> list[str]:
    from dreambat_world.demo import DEMO_INSTANCE_PROMPT, DEMO_SUBJECT_DIR

    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    return [*launcher, "-m", "dreambat", "score",
            "--pretrained_model_name_or_path", args.backbone, "--surrogate_lora", str(surrogate),
            "--instance_data_dir", str(DEMO_SUBJECT_DIR), "--instance_prompt", DEMO_INSTANCE_PROMPT,
            "--backbone_shards", *args.shards, "--output_dir", str(out),
            "--num_score_timesteps", str(args.num_timesteps), "--score_batch_size", str(args.batch_size),
            "--curvature", "exact", "--overwrite_manifest"]


def read_scores(out: Path) -> dict[int, float]:
    scores = {}
    with open(out / "selection.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            scores[record["index"]] = record["score"]
    return scores


def run_config(args, name: str, surrogate: Path, workdir: Path) -> dict:
    processes, threads = CONFIGS[name]
    out = workdir / name.replace(" ", "_")
    command = score_command(args, processes, surrogate, out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TQDM_DISABLE": "1"}

    def once() -> dict:
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        report = json.loads((out / "score_report.json").read_text())
        scored = report["counts"]["scored_this_run"]
        return {"processes": processes, "threads_per_process": threads, "wall_seconds": round(wall, 2),
                "score_seconds": round(report["timings"]["score"], 2), "scored": scored,
                "candidates_per_s": round(scored / report["timings"]["score"], 2),
                "candidates_per_s_wall": round(scored / wall, 2),
                "timings": {k: round(v, 2) for k, v in report["timings"].items()}}

    result = measured(args, name, once)
    result["scores"] = read_scores(out)
    log(f"[{name}] {result['candidates_per_s']:.2f} candidates/s scoring, {result['wall_seconds']:.1f}s wall")
    return result


def parse_args(argv=None):
    from dreambat_world.demo import DEMO_BACKBONE, DEMO_SHARDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=str(DEMO_BACKBONE), help="diffusers folder (default: world backbone)")
    parser.add_argument("--shards", nargs="+", default=[DEMO_SHARDS], help="candidate shards (default: bundled)")
    parser.add_argument("--rank", type=int, default=4, help="surrogate LoRA rank")
    parser.add_argument("--num_timesteps", type=int, default=2, help="K, timesteps per candidate")
    parser.add_argument("--batch_size", type=int, default=16, help="candidates per scoring batch")
    parser.add_argument("--max_other_cores", type=float, default=0.3,
                        help="repeat a run if other processes used more CPU cores than this")
    parser.add_argument("--retries", type=int, default=1, help="extra attempts for a disturbed run")
    parser.add_argument("--wait_quiet_s", type=float, default=120, help="max wait for a quiet machine")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "processes.json"))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    results: dict = {
        "benchmark": "ALBAT scoring, 1 vs 2 processes (benchmarks/bench_processes.py)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "git_head": git_head(), "machine": machine_info(),
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        surrogate = make_surrogate(args.backbone, Path(tmp) / "surrogate", args.rank)
        runs = {name: run_config(args, name, surrogate, Path(tmp)) for name in CONFIGS}
    baseline = runs["1 process x 1 thread"]
    reference = baseline.pop("scores")
    for name, run in runs.items():
        scores = run.pop("scores", reference)
        same_keys = scores.keys() == reference.keys()
        run["max_abs_score_diff_vs_1x1"] = (max(abs(scores[k] - reference[k]) for k in reference)
                                           if same_keys else None)
        run["same_candidates_as_1x1"] = same_keys
        run["speedup_vs_1x1"] = round(run["candidates_per_s"] / baseline["candidates_per_s"], 3)
    results["runs"] = runs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
