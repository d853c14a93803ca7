#!/usr/bin/env python
"""Benchmark ALBAT candidate scoring on a Stable Diffusion backbone: tiny, or SD-1.5-shaped.

Four parts (``--parts``; default the first three), the first two on the same candidates:

* ``throughput``: candidates/s of the fast path (``contracted_scores``: hooks, one forward and one
  backward per batch), of the per-sample reference loop (``reference_scores``: one
  ``loss.backward()`` per candidate, explicit gradients, dot products), and of ``torch.func``
  per-sample gradients (``vmap(grad(loss_of_one_sample))`` over the UNet's LoRA parameters, then
  dot products with h). Scores of the three are compared in the same run.
* ``cost``: seconds of fast-path scoring per candidate-timestep divided by seconds of one
  batched training step (``dreambat.training.loop.training_loss`` forward + ``backward()``, no
  optimiser) per sample.
* ``memory``: peak RSS and time of the whole streaming path (``dreambat.scoring.run.run_scoring``
  over webdataset shards written to a temp dir) for several candidate counts, each in a fresh
  subprocess.
* ``scaling``: for each LoRA rank of ``--ranks``, the fast path against a DataInf-style pipeline
  (DataInf's own recipe: keep an explicit gradient of every candidate, use those rows as the
  curvature set of the closed form, then score): candidates/s, working memory, stored bytes.

Sizes (``--size``): the tiny ``test`` / ``demo`` backbones, or ``sd15`` (SD-1.5's exact UNet, VAE
and CLIP-L shapes with random weights, the real CLIP tokenizer; 4.3 GB written once to the
workdir, or reused with ``--backbone``), at the size's native resolution or ``--resolution``. The
models and candidates live on ``--device`` (``auto``: CUDA when available). Peak memory of each
throughput measurement is the RSS above its start on the CPU, ``torch.cuda.max_memory_allocated``
on a GPU.

Interference (see ``_measure.py``): the CPU used by other processes is recorded for every
measurement. A measurement whose other-process CPU
exceeds ``--max_other_cores`` is repeated (up to ``--retries`` times) and the least disturbed
attempt is kept; every attempt is recorded.

Example::

    python -m benchmarks.bench_scoring --size test --rank 4 --num_timesteps 2 --batch_size 8 \\
        --candidates 64 --out benchmarks/results/scoring-test.json
    python -m benchmarks.bench_scoring --size sd15 --resolution 128 --candidates 8 --batch_size 4 \\
        --parts throughput cost --backbone outputs/sd15/backbone --out benchmarks/results/scoring-sd15-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks._datainf import datainf_pipeline_scores  # noqa: E402
from benchmarks._measure import REPO, PeakMemory, RssSampler, git_head, log, machine_info, measured, scratch  # noqa: E402
from benchmarks._scoring_memory import memory_worker, part_memory  # noqa: E402


SUBJECT_DIR = REPO / "assets" / "subject"
INSTANCE_PROMPT = "a photo of sks star"
PARTS = ("throughput", "cost", "memory", "scaling")
DEFAULT_PARTS = ("throughput", "cost", "memory")


# --------------------------------------------------------------------------------------------
# Setup: tiny backbone, surrogate LoRA, fitted direction, candidates
# --------------------------------------------------------------------------------------------


class Surrogate:
    """A backbone (``args.size``, or the folder ``args.backbone``) on ``args.device`` with a UNet
    LoRA of random factors (seed 0), its ALBAT task, the subject photos and the candidates."""

    def __init__(self, args, workdir: Path, rank: int | None = None, candidates: int | None = None):
        import torch

        from dreambat.albat import LoraBlocks
        from dreambat.backbone.load import load_backbone
        from dreambat.backbone.sd15 import SD15_RESOLUTION
        from dreambat.backbone.tiny import get_tiny_size, write_tiny_backbone
        from dreambat.data.subject import SubjectDataset, collate_subject
        from dreambat.lora import add_unet_lora
        from dreambat.scoring.diffusion_task import DiffusionLossTask

        self.size = args.size
        native = SD15_RESOLUTION if args.size == "sd15" else get_tiny_size(args.size).resolution
        self.resolution = getattr(args, "resolution", None) or native
        backbone = getattr(args, "backbone", None)
        self.folder = (Path(backbone) if backbone
                       else write_tiny_backbone(workdir / f"backbone-{args.size}", args.size, seed=0))
        self.device = torch.device(args.device)
        self.backbone = load_backbone(str(self.folder))
        for model in (self.backbone.unet, self.backbone.vae, self.backbone.text_encoder):
            model.to(self.device)
        torch.manual_seed(0)
        self.rank = rank or args.rank
        add_unet_lora(self.backbone.unet, rank=self.rank, init_lora_weights=False)
        self.backbone.unet.to(self.device)
        self.task = DiffusionLossTask(self.backbone, args.num_timesteps)
        self.blocks = LoraBlocks.from_models(self.backbone.unet)
        subject = SubjectDataset(SUBJECT_DIR, INSTANCE_PROMPT, self.resolution, center_crop=True)
        self.subject_items = [subject[i] for i in range(len(subject))]
        self.reference = [collate_subject([item]) for item in self.subject_items]
        self.candidates = candidate_batches(candidates or args.candidates, args.batch_size, self.resolution)


class Setup(Surrogate):
    """:class:`Surrogate` with the ``exact`` directions fitted on the subject photos (damping 0.1)
    and the subject's mean gradient (for the DataInf-style pipeline)."""

    def __init__(self, args, workdir: Path, rank: int | None = None, candidates: int | None = None):
        from dreambat.albat import get_strategy
        from dreambat.albat import reference_rows
        from dreambat.albat import AlbatScorer

        super().__init__(args, workdir, rank, candidates)
        scorer = AlbatScorer(self.task, self.blocks, get_strategy("exact", 0.1))
        started = time.perf_counter()
        self.curvature = scorer.fit(self.reference)
        self.fit_seconds = time.perf_counter() - started
        self.directions = scorer.directions
        self.subject_gradient = {name: rows.mean(dim=0) for name, rows in
                                 reference_rows(self.task, self.blocks, self.reference).items()}

    def describe(self) -> dict:
        return {
            "size": self.size,
            "device": str(self.device),
            "backbone": str(self.folder),
            "rank": self.rank,
            "resolution": self.resolution,
            "latent_resolution": self.resolution // 2 ** (len(self.backbone.vae.config.block_out_channels) - 1),
            "num_lora_blocks": len(self.blocks),
            "num_lora_params_D": self.blocks.num_params,
            "unet_params": sum(p.numel() for p in self.backbone.unet.parameters()),
            "n_ref": self.curvature["n_ref"],
            "curvature": f"exact, damping 0.1 (fitted on assets/subject, 5 images, K = {self.task.num_terms})",
            "fit_seconds": round(self.fit_seconds, 3),
        }


def candidate_batches(n: int, batch_size: int, resolution: int) -> list[dict]:
    """``n`` synthetic backbone candidates (image + caption + key), in batches, all in memory."""
    import torch

    from dreambat.data.transforms import ImageTransform
    from dreambat_world.synthetic import backbone_records

    transform = ImageTransform(resolution, center_crop=True)
    records = list(backbone_records(n, seed=1, size=resolution))
    batches = []
    for start in range(0, n, batch_size):
        chunk = records[start : start + batch_size]
        batches.append({
            "pixel_values": torch.stack([transform(r["image"]) for r in chunk]),
            "prompts": [r["caption"] for r in chunk],
            "keys": [r["key"] for r in chunk],
        })
    return batches


# --------------------------------------------------------------------------------------------
# torch.func per-sample gradients
# --------------------------------------------------------------------------------------------


def vmap_scores(setup: Setup, batch: dict):
    """Z of each candidate via ``vmap(grad(ℓ_i))`` over the LoRA params, then ⟨h, g_i⟩. ``[B]`` float64.

    Same loss as ``DiffusionLossTask``: VAE posterior-mean latents, keyed noise, the K fixed
    timesteps, the text encoder's context; only the UNet runs inside ``vmap(grad(...))``, on the
    K noised latents of one candidate.
    """
    import torch
    from torch.func import functional_call, grad, vmap

    from dreambat.diffusion import diffusion_target, encode_images, encode_prompts, tokenize_prompts

    backbone, task, blocks = setup.backbone, setup.task, setup.blocks
    unet, scheduler, K = backbone.unet, backbone.noise_scheduler, task.num_terms
    with torch.no_grad():
        latents = encode_images(backbone.vae, batch["pixel_values"])
        B, shape = latents.shape[0], latents.shape[1:]
        noise = task.design.noise(batch["keys"], shape).to(latents.dtype).reshape(B * K, *shape)
        flat_latents = latents.repeat_interleave(K, dim=0)
        timesteps = task.timesteps.repeat(B)
        noisy = scheduler.add_noise(flat_latents, noise, timesteps).reshape(B, K, *shape)
        target = diffusion_target(scheduler, flat_latents, noise, timesteps).reshape(B, K, *shape)
        context = encode_prompts(backbone.text_encoder, tokenize_prompts(backbone.tokenizer, batch["prompts"]))
        context = context[:, None].expand(B, K, *context.shape[1:])
    params = {name: param.detach() for name, param in blocks}
    steps = task.timesteps

    def loss_of_one_sample(lora, noisy_i, context_i, target_i):
        prediction = functional_call(unet, lora, (noisy_i, steps, context_i), kwargs={"return_dict": False})[0]
        return (prediction.float() - target_i.float()).pow(2).mean()  # = mean over K of per-row MSE

    grads = vmap(grad(loss_of_one_sample), in_dims=(None, 0, 0, 0))(params, noisy, context, target)
    scores = torch.zeros(B, dtype=torch.float64, device=setup.device)
    for name in blocks.names:
        h = setup.directions[name]
        h = h[0] if h.ndim == 2 else h  # the full-budget direction (the split-half ones follow it)
        scores += grads[name].reshape(B, -1).double() @ h.double()
    return scores


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


def _score_all(fn, setup: Setup, batches: list[dict]):
    import torch

    return torch.cat([fn(setup.task, setup.blocks, setup.directions, batch).cpu() for batch in batches])


def _agreement(scores, reference) -> dict:
    import torch
    from scipy.stats import spearmanr

    diff = (scores - reference).abs()
    return {
        "max_abs_err_over_max_abs_ref": float(diff.max() / reference.abs().max()),
        "max_elementwise_rel_err": float((diff / reference.abs().clamp_min(1e-300)).max()),
        "spearman": float(spearmanr(scores.numpy(), reference.numpy()).statistic),
        "sign_agreement": float((torch.sign(scores) == torch.sign(reference)).double().mean()),
    }


def part_throughput(args, setup: Setup) -> dict:
    import torch

    from dreambat.albat import contracted_scores, reference_scores

    batches = setup.candidates
    n = sum(len(b["keys"]) for b in batches)
    single = {key: value[:1] for key, value in batches[0].items()}
    results: dict = {"candidates": n, "batch_size": args.batch_size, "num_timesteps": args.num_timesteps}
    out: dict = {}

    def timed(label, warm, run):
        warm()  # warm-up, not timed (first call pays for oneDNN / allocator set-up)
        gc.collect()

        def once():
            with PeakMemory(setup.device) as memory:
                started = time.perf_counter()
                out[label] = run()
                seconds = time.perf_counter() - started
            return {"seconds": round(seconds, 4), "candidates_per_s": round(n / seconds, 3),
                    "peak_memory_mb": round(memory.peak_mb, 1), "peak_memory_what": memory.what}

        results[label] = measured(args, label, once)
        log(f"[{label}] {results[label]['candidates_per_s']:.2f} candidates/s")

    timed("fast_path", lambda: contracted_scores(setup.task, setup.blocks, setup.directions, batches[0]),
          lambda: _score_all(contracted_scores, setup, batches))
    timed("reference_loop", lambda: reference_scores(setup.task, setup.blocks, setup.directions, single),
          lambda: _score_all(reference_scores, setup, batches))
    results["reference_loop"]["what"] = (
        "reference_scores: per candidate one forward, one loss.backward(), explicit LoRA gradients, "
        "float64 dot products with h"
    )
    reference = out["reference_loop"]
    results["fast_path"]["vs_reference"] = _agreement(out["fast_path"], reference)
    results["fast_path"]["what"] = "contracted_scores: hooks, one forward + one backward per batch of candidates"

    try:
        timed("torch_func_vmap", lambda: vmap_scores(setup, batches[0]),
              lambda: torch.cat([vmap_scores(setup, b).cpu() for b in batches]))
        results["torch_func_vmap"]["vs_reference"] = _agreement(out["torch_func_vmap"], reference)
        results["torch_func_vmap"]["supported"] = True
        results["torch_func_vmap"]["what"] = (
            "torch.func: vmap(grad(loss_of_one_sample)) over each batch, LoRA params as the "
            "differentiated dict of functional_call(unet, ...), then float64 dot products with h"
        )
    except Exception as error:  # record why, report no number
        results["torch_func_vmap"] = {
            "supported": False,
            "error": f"{type(error).__name__}: {error}"[:2000],
            "traceback_tail": traceback.format_exc()[-2000:],
        }
        log(f"[torch_func_vmap] not supported: {type(error).__name__}: {error}")

    fast = results["fast_path"]["candidates_per_s"]
    results["speedup_fast_vs_reference"] = round(fast / results["reference_loop"]["candidates_per_s"], 3)
    if results["torch_func_vmap"].get("supported"):
        results["speedup_fast_vs_vmap"] = round(fast / results["torch_func_vmap"]["candidates_per_s"], 3)
        results["speedup_vmap_vs_reference"] = round(
            results["torch_func_vmap"]["candidates_per_s"] / results["reference_loop"]["candidates_per_s"], 3
        )
    results["target_fast_ge_3x_reference"] = {
        "target": ">= 3.0", "value": results["speedup_fast_vs_reference"],
        "met": results["speedup_fast_vs_reference"] >= 3.0,
    }
    return results


def part_cost(args, setup: Setup) -> dict:
    import torch

    from dreambat.albat import contracted_scores
    from dreambat.training.config import TrainConfig
    from dreambat.training.loop import training_loss

    backbone, K = setup.backbone, args.num_timesteps
    batches = setup.candidates
    n = sum(len(b["keys"]) for b in batches)
    config = TrainConfig(
        pretrained_model_name_or_path=str(setup.folder), instance_data_dir=str(SUBJECT_DIR),
        instance_prompt=INSTANCE_PROMPT,
    )
    params = list(setup.blocks.params)

    def repeat_rows(batch: dict, times: int) -> dict:
        return {
            "pixel_values": batch["pixel_values"].repeat_interleave(times, dim=0),
            "prompts": [p for p in batch["prompts"] for _ in range(times)],
        }

    def train_step(batch: dict) -> None:
        loss = training_loss(backbone, config, batch, backbone.text_encoder, backbone.unet)
        loss.backward()
        for p in params:  # optimizer.zero_grad(set_to_none=True), no optimizer step
            p.grad = None

    def time_scoring():
        started = time.perf_counter()
        for batch in batches:
            contracted_scores(setup.task, setup.blocks, setup.directions, batch)
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 4), "candidate_timesteps": n * K,
                "seconds_per_candidate_timestep": seconds / (n * K)}

    def time_training(rows_per_sample: int):
        train_batches = [repeat_rows(b, rows_per_sample) for b in batches]
        torch.manual_seed(0)
        started = time.perf_counter()
        for batch in train_batches:
            train_step(batch)
        seconds = time.perf_counter() - started
        samples = n * rows_per_sample
        return {"seconds": round(seconds, 4), "steps": len(train_batches),
                "batch_size": args.batch_size * rows_per_sample, "samples": samples,
                "seconds_per_sample": seconds / samples}

    def time_training_one_candidate():
        # The per-sample loop's floor: training steps of one candidate (its K rows) at a time.
        rows = [{"pixel_values": b["pixel_values"][i : i + 1], "prompts": b["prompts"][i : i + 1]}
                for b in batches for i in range(len(b["prompts"]))]
        torch.manual_seed(0)
        started = time.perf_counter()
        for row in rows:
            train_step(repeat_rows(row, K))
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 4), "steps": len(rows), "batch_size": K,
                "samples": n * K, "seconds_per_sample": seconds / (n * K)}

    def time_forward_only():
        started = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                setup.task.loss_matrix(batch)
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 4), "seconds_per_candidate_timestep": seconds / (n * K)}

    # warm-up
    contracted_scores(setup.task, setup.blocks, setup.directions, batches[0])
    train_step(repeat_rows(batches[0], K))
    train_step(repeat_rows(batches[0], 1))

    scoring = measured(args, "cost/scoring", time_scoring)
    train_matched = measured(args, "cost/train_B*K", lambda: time_training(K))
    train_same_b = train_matched if K == 1 else measured(args, "cost/train_B", lambda: time_training(1))
    train_one = measured(args, "cost/train_1xK", lambda: time_training_one_candidate())
    forward_only = measured(args, "cost/forward_only", time_forward_only)

    ratio = scoring["seconds_per_candidate_timestep"] / train_matched["seconds_per_sample"]
    ratio_b = scoring["seconds_per_candidate_timestep"] / train_same_b["seconds_per_sample"]
    return {
        "definition": (
            "ratio = (fast-path scoring seconds / (candidates x K)) / (training-step seconds / "
            "samples in the step). Scoring: contracted_scores over the candidates in batches of "
            f"{args.batch_size} (each batch runs the UNet on {args.batch_size}x{K} rows). Training "
            "step: dreambat.training.loop.training_loss (VAE encode, random timesteps, text encoder, "
            "UNet, MSE) + loss.backward() into the LoRA params, no optimiser step, grads set to None. "
            f"Main ratio: training batch of {args.batch_size * K} rows (= the UNet rows of one scoring "
            f"batch; each candidate image repeated K={K} times); also given against a training batch "
            f"of {args.batch_size} rows."
        ),
        "scoring": scoring,
        "training_step_matched_rows": train_matched,
        "training_step_same_batch_size": train_same_b,
        "forward_only_loss_matrix": forward_only,
        "ratio_scoring_per_candidate_timestep_over_train_step_per_sample": round(ratio, 3),
        "ratio_vs_train_batch_of_batch_size": round(ratio_b, 3),
        "training_step_one_candidate": train_one,
        "batching_gain_bound": round(train_one["seconds_per_sample"] / train_matched["seconds_per_sample"], 3),
        "batching_gain_bound_what": (
            "training seconds per sample at one candidate per step (K rows) / at the scoring batch "
            f"({args.batch_size * K} rows): what batching alone buys on this machine, an upper bound "
            "for any batched scorer over a one-candidate-at-a-time loop that costs one training step"
        ),
        "forward_only_over_train_step_per_sample": round(
            forward_only["seconds_per_candidate_timestep"] / train_matched["seconds_per_sample"], 3),
        "target_le_1_5x_train_step": {"target": "<= 1.5", "value": round(ratio, 3), "met": ratio <= 1.5},
    }


def part_scaling(args, workdir: Path) -> dict:
    """Fast path vs the DataInf-style pipeline for each LoRA rank of ``--ranks``."""
    from dreambat.albat import contracted_scores

    rows = []
    for rank in args.ranks:
        setup = Setup(args, workdir, rank=rank, candidates=args.scaling_candidates)
        batches = setup.candidates
        n = sum(len(b["keys"]) for b in batches)
        contracted_scores(setup.task, setup.blocks, setup.directions, batches[0])  # warm-up
        out: dict = {}

        def fast(setup=setup, batches=batches, out=out):
            with RssSampler() as rss:
                started = time.perf_counter()
                out["fast"] = _score_all(contracted_scores, setup, batches)
                seconds = time.perf_counter() - started
            return {"seconds": round(seconds, 3), "candidates_per_s": round(n / seconds, 3),
                    "working_mb": round(rss.working_mb, 1)}

        def datainf(setup=setup, batches=batches, out=out):
            with RssSampler() as rss:
                started = time.perf_counter()
                out["datainf"], info = datainf_pipeline_scores(setup.task, setup.blocks,
                                                              setup.subject_gradient, batches)
                seconds = time.perf_counter() - started
            return {"seconds": round(seconds, 3), "candidates_per_s": round(n / seconds, 3),
                    "working_mb": round(rss.working_mb, 1),
                    **{k: round(v, 3) for k, v in info.items()}}

        row = {"rank": rank, "D": setup.blocks.num_params, "candidates": n,
               "fast_path": measured(args, f"scaling/r{rank}/fast", fast),
               "datainf_pipeline": measured(args, f"scaling/r{rank}/datainf", datainf)}
        row["datainf_stored_mb_per_1k_candidates"] = round(4 * row["D"] * 1000 / 2**20, 1)
        row["spearman_datainf_pipeline_vs_fast_exact"] = _agreement(out["datainf"], out["fast"])["spearman"]
        rows.append(row)
        log(f"[scaling] rank {rank} D={row['D']}: fast {row['fast_path']['candidates_per_s']:.2f} cand/s "
            f"({row['fast_path']['working_mb']:.0f} MB), datainf pipeline "
            f"{row['datainf_pipeline']['candidates_per_s']:.2f} cand/s "
            f"({row['datainf_pipeline']['working_mb']:.0f} MB)")
        del setup
        gc.collect()
    return {
        "what": (
            "Per LoRA rank, on the same candidates: the fast path (contracted_scores, exact curvature "
            "from the subject) and a DataInf-style pipeline (explicit per-candidate gradients kept "
            "in memory, DataInf closed form with the candidates as curvature set and the subject's "
            "mean gradient as v, then dot products). working_mb = peak RSS above the level before "
            "the call (sampled every 10 ms)."
        ),
        "size": args.size, "num_timesteps": args.num_timesteps, "batch_size": args.batch_size,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("test", "demo", "sd15"), default="test",
                        help="backbone: tiny (32 / 64 px) or SD-1.5-shaped with random weights (512 px)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the size's native one)")
    parser.add_argument("--backbone", default=None,
                        help="an existing diffusers folder of that size (e.g. from `dreambat make-backbone --size sd15`)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank of the surrogate")
    parser.add_argument("--num_timesteps", type=int, default=2, help="K, timesteps per candidate")
    parser.add_argument("--batch_size", type=int, default=8, help="candidates per fast-path batch")
    parser.add_argument("--candidates", type=int, default=64, help="candidates for throughput and cost")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS), help="what to measure")
    parser.add_argument("--memory_candidates", type=int, nargs="+", default=[1000, 10000],
                        help="candidate counts of the memory part (growth is reported smallest -> largest)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64],
                        help="LoRA ranks of the scaling part")
    parser.add_argument("--scaling_candidates", type=int, default=64, help="candidates per rank in the scaling part")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory_size", choices=("test", "demo"), default="test", help="backbone size for memory")
    parser.add_argument("--memory_timesteps", type=int, default=1, help="K for the memory part")
    parser.add_argument("--max_other_cores", type=float, default=0.3,
                        help="repeat a measurement if other processes used more CPU cores than this")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a disturbed measurement")
    parser.add_argument("--wait_quiet_s", type=float, default=120, help="max wait for a quiet machine before each measurement")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed after)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/scoring-<size>.json)")
    for hidden in ("--_backbone", "--_surrogate", "--_shards", "--_outdir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--_count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_memory_worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._memory_worker:
        memory_worker(args, SUBJECT_DIR, INSTANCE_PROMPT)
        return
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"scoring-{args.size}.json"
    started = time.perf_counter()
    results: dict = {
        "benchmark": "ALBAT scoring (benchmarks/bench_scoring.py)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "git_head": git_head(),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with scratch(args.workdir, "bench-scoring-") as workdir:
        if {"throughput", "cost"} & set(args.parts):
            setup = Setup(args, workdir)
            results["model"] = setup.describe()
            log(f"[setup] {results['model']}")
            if "throughput" in args.parts:
                results["throughput"] = part_throughput(args, setup)
            if "cost" in args.parts:
                results["cost"] = part_cost(args, setup)
            del setup
            gc.collect()
        if "scaling" in args.parts:
            results["scaling"] = part_scaling(args, workdir)
        if "memory" in args.parts:
            results["memory"] = part_memory(args, workdir)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['total_seconds']}s)")


if __name__ == "__main__":
    main()
