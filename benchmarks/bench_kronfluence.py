#!/usr/bin/env python
"""kronfluence side by side with ALBAT: same surrogate LoRA, same candidates, same diffusion loss.

What: the surrogate of ``bench_scoring.py`` (a tiny backbone, ``--size test|demo``; a UNet LoRA of
rank ``--rank`` with random factors, ``init_lora_weights=False``, seed 0) and its synthetic
candidates (``backbone_records``, seed 1) are scored

* by ALBAT's fast path (``contracted_scores``: one forward and one backward per batch) along the
  ``identity`` and ``exact`` directions fitted on the 5 subject photos in ``assets/subject``;
* by kronfluence 1.0.1 (an optional benchmark dependency, ``pip install -e .[bench]``; dreambat
  never imports it) with a ``Task`` for the same loss: the per-sample denoising MSE averaged over
  the same K fixed timesteps with the same key-seeded noise as ``DiffusionLossTask``, the UNet's
  ``lora_A`` / ``lora_B`` Linear modules tracked, strategies ``identity`` and ``ekfac``. Pairwise
  scores with the subject photos as queries (measurement: their loss) and the candidates as
  training data, averaged over queries into one score per candidate.

For each method: time of each stage (fit, score), candidates/s (scoring only and end to end),
peak RSS above the level at the method's start (sampled every 10 ms), and Spearman of its scores
with ALBAT's ``identity`` and ``exact`` scores.

How the loss is matched (``--layout``). kronfluence takes per-example gradients along the first
axis of each tracked module's input, so one kronfluence example is one UNet row, while ALBAT's
task runs one row per (sample, term).

* ``rows`` (default): one kronfluence example per (sample, term); its loss is that row's MSE. The
  pairwise matrix ``[Q·K, N·K]`` is averaged over the query rows and over each candidate's K
  rows. Scores are bilinear in the two gradients and every preconditioner is linear, so this is
  exactly the score of the per-sample loss ``mean_k ℓ_k`` (for ``identity``: ``⟨v, ∇ℓ(x)⟩``,
  ALBAT's identity score itself). EK-FAC's factors are then fitted on per-(sample, term)
  gradients, as ALBAT's ``G`` is on per-(subject, term) rows.
* ``samples``: one kronfluence example per sample, train loss ``loss_matrix(batch).mean(1).sum()``
  with the UNet run once per term (K calls of each LoRA module per forward), so
  ``FactorArguments(has_shared_parameters=True)`` when K > 1, kronfluence's route for modules
  called several times per forward. A check, not a recommendation: in kronfluence 1.0.1 the
  training side of ``compute_pairwise_scores`` then keeps only the last call's contribution (its
  backward hook assigns the module's score instead of adding to it, then removes the hooks still
  pending), so the scores are ``⟨P v, ∇ℓ_{K-1}(x) / K⟩`` instead of ``⟨P v, ∇ℓ(x)⟩``; the query
  side does accumulate all K calls. With K = 1 both layouts are the same computation.

Curvature data. ALBAT fits ``exact`` on the subject side (the reference rows). kronfluence fits
factors on the dataset given to ``fit_all_factors``, by convention the training set: ``ekfac``
fits them on the candidates, ``ekfac_subject`` on the subject photos (ALBAT's side). Both use the
empirical Fisher (the observed targets, ``use_empirical_fisher=True``, as ALBAT's ``G``; ``--fisher
sampled`` draws targets from the model's Gaussian instead) and the damping
``--damping · mean(Λ_l)`` per module (kronfluence's heuristic, ``damping_factor=None``, with its
scale set to ``--damping``), which is ALBAT's ``λ_l = c · mean‖g‖² / d_l`` computed from the
factors' own data (Λ_l holds the mean squared per-example gradient in an orthonormal basis, so its
mean is ``mean‖g‖² / d_l``). With a large ``--damping`` both directions tend to ``v_l / λ_l``, and
``ekfac_subject`` must then rank like ALBAT's ``exact``: a check that λ_l is the same; at the default
the two differ by their curvature only (EK-FAC's Kronecker eigenbasis with per-entry eigenvalue
corrections against the exact damped inverse of the reference rows' Fisher per block).

Sign: kronfluence's pairwise score is ``⟨P ∇f(query), ∇ℓ(train)⟩`` with no minus sign, ALBAT's
``Z = ⟨G⁻¹ v, ∇ℓ(x)⟩``: both positive when a gradient step on the candidate lowers the subject
loss. The script reports the fitted ratio and the sign agreement of the identity scores.

Example::

    python -m benchmarks.bench_kronfluence --size test --rank 4 --num_timesteps 2 --candidates 64 \\
        --threads 1 --out benchmarks/results/kronfluence-test.json
    python -m benchmarks.bench_kronfluence --table benchmarks/results/kronfluence-test.json
    # checks: same per-module damping (large c: ekfac on the subject -> ALBAT exact), and the samples layout
    python -m benchmarks.bench_kronfluence --threads 1 --kronfluence ekfac_subject --damping 1000 \\
        --out benchmarks/results/kronfluence-test-damping1000.json
    python -m benchmarks.bench_kronfluence --threads 1 --albat identity --kronfluence identity --layout samples \\
        --out benchmarks/results/kronfluence-test-samples.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from benchmarks._measure import REPO, Interference, RssSampler, git_head, log, machine_info, scratch  # noqa: E402
from benchmarks.bench_scoring import Surrogate as ScoringSurrogate  # noqa: E402

try:  # the optional benchmark dependency (pip install -e .[bench])
    import kronfluence
    from kronfluence.task import Task as _KronfluenceTask
except ImportError:  # pragma: no cover - exercised only without the extra
    kronfluence = None
    _KronfluenceTask = object

ALBAT_STRATEGIES = ("identity", "exact")
KF_STRATEGIES = ("identity", "ekfac", "ekfac_subject")


# --------------------------------------------------------------------------------------------
# The surrogate and the candidates (as bench_scoring.Setup builds them)
# --------------------------------------------------------------------------------------------


class Surrogate(ScoringSurrogate):
    """``bench_scoring``'s surrogate on a tiny backbone, described for this benchmark."""

    def __init__(self, args, workdir: Path):
        super().__init__(args, workdir)
        self.num_candidates = sum(len(batch["keys"]) for batch in self.candidates)

    def describe(self) -> dict:
        return {
            "size": self.size,
            "backbone": "dreambat.backbone.tiny.write_tiny_backbone(seed=0)",
            "rank": self.rank,
            "resolution": self.resolution,
            "num_timesteps_K": self.task.num_terms,
            "timesteps": self.task.timesteps.tolist(),
            "num_lora_blocks": len(self.blocks),
            "num_lora_params_D": self.blocks.num_params,
            "subject_photos": len(self.subject_items),
            "candidates": self.num_candidates,
        }


# --------------------------------------------------------------------------------------------
# ALBAT side
# --------------------------------------------------------------------------------------------


def albat_scores(surrogate: Surrogate, strategy: str, damping: float) -> tuple[torch.Tensor, dict]:
    """ALBAT's fast-path scores ``[N]`` (float64) along ``strategy``'s direction, with timings."""
    from dreambat.albat import get_strategy
    from dreambat.albat import contracted_scores
    from dreambat.albat import AlbatScorer

    scorer = AlbatScorer(surrogate.task, surrogate.blocks, get_strategy(strategy, damping))
    meter = Interference()
    with RssSampler() as rss:
        started = time.perf_counter()
        scorer.fit(surrogate.reference)
        fitted = time.perf_counter()
        scores = torch.cat([contracted_scores(surrogate.task, surrogate.blocks, scorer.directions, batch)
                            for batch in surrogate.candidates])
        done = time.perf_counter()
    return scores, _timing(surrogate.num_candidates, fitted - started, done - fitted, rss.working_mb, meter)


def samples_layout_check(surrogate: Surrogate, args, kf_identity: torch.Tensor) -> dict:
    """Agreement of kronfluence's ``samples``-layout identity scores with each term's share of ALBAT's.

    Term k's share is ``⟨v, ∇ℓ_k(x) / K⟩`` (``contracted_terms``); ALBAT's identity score is their sum.
    """
    from dreambat.albat import get_strategy
    from dreambat.albat import contracted_terms
    from dreambat.albat import AlbatScorer

    scorer = AlbatScorer(surrogate.task, surrogate.blocks, get_strategy("identity", args.damping))
    scorer.fit(surrogate.reference)
    terms = torch.cat([contracted_terms(surrogate.task, surrogate.blocks, scorer.directions, batch)[:, :, 0]
                       for batch in surrogate.candidates])
    check = {f"term_{k}_share": agreement(kf_identity, terms[:, k]) for k in range(terms.shape[1])}
    check["sum_of_terms"] = agreement(kf_identity, terms.sum(dim=1))
    check["what"] = ("kronfluence identity (layout samples, has_shared_parameters=True) against each term's "
                     "share <v, grad l_k(x)>/K of ALBAT's identity score and against their sum")
    return check


def _timing(n: int, fit_s: float, score_s: float, working_mb: float, meter: Interference) -> dict:
    return {
        "other_cpu_cores": meter.stop()["other_cpu_cores"],  # CPU used by other processes meanwhile
        "fit_s": round(fit_s, 3),
        "score_s": round(score_s, 3),
        "candidates_per_s_scoring": round(n / score_s, 3),
        "candidates_per_s_end_to_end": round(n / (fit_s + score_s), 3),
        "peak_rss_mb": round(working_mb, 1),
    }


# --------------------------------------------------------------------------------------------
# kronfluence side
# --------------------------------------------------------------------------------------------


class UNetModel(torch.nn.Module):
    """The nn.Module handed to kronfluence: the (copied) LoRA UNet and nothing else."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet


class ItemDataset(Dataset):
    """A list of dict items (one kronfluence example each)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def collate_items(items: list[dict]) -> dict:
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "prompts": [item["prompt"] for item in items],
        "keys": [item["key"] for item in items],
    }
    if "term" in items[0]:
        batch["terms"] = torch.tensor([item["term"] for item in items], dtype=torch.long)
    return batch


def sample_items(batches: list[dict]) -> list[dict]:
    """Batched dicts (``pixel_values``, ``prompts``, ``keys``) -> one item per sample."""
    return [{"pixel_values": batch["pixel_values"][i], "prompt": batch["prompts"][i], "key": batch["keys"][i]}
            for batch in batches for i in range(len(batch["keys"]))]


def row_items(items: list[dict], num_terms: int) -> list[dict]:
    """One item per (sample, term), sample-major (item ``i·K + k`` is sample i's term k)."""
    return [item | {"term": k} for item in items for k in range(num_terms)]


class DiffusionInfluenceTask(_KronfluenceTask):
    """A kronfluence ``Task`` for ``DiffusionLossTask``'s loss: same latents, timesteps, noise, context.

    ``layout="rows"``: a batch is (sample, term) rows (``batch["terms"]``), the loss of a row is its
    MSE, and the UNet runs once on all rows. ``layout="samples"``: a batch is samples, the loss of a
    sample is the mean of its K terms' MSE (``DiffusionLossTask.loss_matrix(batch).mean(dim=1)``),
    and the UNet runs once per term on all samples (K calls of every LoRA module per forward).
    The train loss and the measurement are the sums over the batch of these losses.

    VAE latents (posterior means, a fixed function of the image) are computed once per key and
    kept until :meth:`clear_cache`, so the ``rows`` layout does not encode an image K times.
    """

    def __init__(self, backbone, loss_task, tracked_modules: list[str], layout: str, *, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.design = loss_task.design
        self.timesteps = loss_task.timesteps
        self.num_terms = loss_task.num_terms
        self.tracked_modules = list(tracked_modules)
        self.layout = layout
        self.seed = seed
        self._latents: dict[str, torch.Tensor] = {}

    def clear_cache(self) -> None:
        self._latents.clear()

    def _encode(self, pixel_values: torch.Tensor, keys: list[str]) -> torch.Tensor:
        from dreambat.diffusion import encode_images

        new = {}
        for i, key in enumerate(keys):
            if key not in self._latents and key not in new:
                new[key] = i
        if new:
            latents = encode_images(self.backbone.vae, pixel_values[list(new.values())])
            self._latents.update(zip(new, latents))
        return torch.stack([self._latents[key] for key in keys])

    def _noise(self, keys: list[str], terms: torch.Tensor, shape) -> torch.Tensor:
        unique = list(dict.fromkeys(keys))
        table = self.design.noise(unique, shape)  # [U, J, *shape], keyed exactly as in ALBAT
        where = {key: i for i, key in enumerate(unique)}
        return torch.stack([table[where[key], int(term)] for key, term in zip(keys, terms)])

    def _row_losses(self, model, pixel_values, prompts, keys, terms, sample: bool) -> torch.Tensor:
        from dreambat.diffusion import diffusion_target, encode_prompts, tokenize_prompts

        backbone = self.backbone
        device = backbone.unet.device
        latents = self._encode(pixel_values, keys)
        noise = self._noise(keys, terms, latents.shape[1:]).to(device=device, dtype=latents.dtype)
        timesteps = self.timesteps[terms].to(device)
        noisy = backbone.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():  # the text encoder carries no LoRA: nothing of it is tracked
            context = encode_prompts(backbone.text_encoder, tokenize_prompts(backbone.tokenizer, prompts))
        prediction = model.unet(noisy, timesteps, context, return_dict=False)[0].float()
        if sample:  # true Fisher: targets from the model's Gaussian, NLL ∝ the mean squared error
            generator = torch.Generator().manual_seed(self.seed)
            scale = math.sqrt(prediction[0].numel() / 2)
            draw = torch.randn(prediction.shape, generator=generator).to(prediction)
            target = prediction.detach() + scale * draw
        else:
            target = diffusion_target(backbone.noise_scheduler, latents, noise, timesteps).float()
        return (prediction - target).pow(2).mean(dim=(1, 2, 3))

    def losses(self, batch: dict, model, sample: bool = False) -> torch.Tensor:
        """Per-example losses of ``batch``: one per row (``rows``) or per sample (``samples``)."""
        if self.layout == "rows":
            return self._row_losses(model, batch["pixel_values"], batch["prompts"], batch["keys"],
                                    batch["terms"], sample)
        B = len(batch["keys"])
        per_term = [
            self._row_losses(model, batch["pixel_values"], batch["prompts"], batch["keys"],
                             torch.full((B,), k, dtype=torch.long), sample)
            for k in range(self.num_terms)
        ]
        return torch.stack(per_term, dim=1).mean(dim=1)

    def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
        return self.losses(batch, model, sample).sum()

    def compute_measurement(self, batch, model) -> torch.Tensor:
        return self.losses(batch, model).sum()

    def get_influence_tracked_modules(self):
        return self.tracked_modules


class Kronfluence:
    """kronfluence's Analyzer on a copy of the surrogate's UNet, with the datasets of one layout."""

    def __init__(self, surrogate: Surrogate, args, workdir: Path):
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.utils.dataset import DataLoaderKwargs

        from dreambat.albat import lora_factors

        self.layout = args.layout
        self.num_terms = surrogate.task.num_terms
        self.n = surrogate.num_candidates
        self.args = args
        unet = copy.deepcopy(surrogate.backbone.unet)  # prepare_model freezes and wraps in place
        tracked = [f"unet.{name}" for name, _ in lora_factors(unet)]
        self.task = DiffusionInfluenceTask(surrogate.backbone, surrogate.task, tracked, self.layout)
        model = prepare_model(UNetModel(unet), self.task)
        self.analyzer = Analyzer(
            analysis_name="dreambat", model=model, task=self.task, cpu=surrogate.device.type == "cpu",
            disable_tqdm=True, output_dir=str(workdir / "kronfluence"), log_level=logging.WARNING,
        )
        self.analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_items))
        candidates = sample_items(surrogate.candidates)
        subject = list(surrogate.subject_items)
        if self.layout == "rows":
            candidates, subject = row_items(candidates, self.num_terms), row_items(subject, self.num_terms)
        self.train, self.query = ItemDataset(candidates), ItemDataset(subject)
        per_sample = self.num_terms if self.layout == "rows" else 1
        self.train_batch = args.batch_size * per_sample  # the same UNet rows per forward as ALBAT's batch
        self.query_batch = len(self.query)  # all queries at once: one pass over the candidates

    def factor_args(self, strategy: str):
        from kronfluence.arguments import FactorArguments

        return FactorArguments(
            strategy=strategy,
            use_empirical_fisher=self.args.fisher == "empirical",
            has_shared_parameters=self.layout == "samples" and self.num_terms > 1,
            covariance_max_examples=None, lambda_max_examples=None,
        )

    def run(self, method: str) -> tuple[torch.Tensor, dict]:
        """Fit the factors of ``method`` and score: ``[N]`` mean pairwise scores, with timings."""
        import kronfluence.factor.config as factor_config
        from kronfluence.arguments import ScoreArguments

        strategy = "ekfac" if method.startswith("ekfac") else method
        fit_on = self.query if method == "ekfac_subject" else self.train
        factor_config.HEURISTIC_DAMPING_SCALE = self.args.damping  # damping_factor=None: c · mean(Λ_l)
        score_args = ScoreArguments(damping_factor=None)
        self.task.clear_cache()
        meter = Interference()
        with RssSampler() as rss:
            started = time.perf_counter()
            self.analyzer.fit_all_factors(
                factors_name=method, dataset=fit_on, per_device_batch_size=self.train_batch,
                factor_args=self.factor_args(strategy), overwrite_output_dir=True,
            )
            fitted = time.perf_counter()
            self.task.clear_cache()
            self.analyzer.compute_pairwise_scores(
                scores_name=method, factors_name=method, query_dataset=self.query, train_dataset=self.train,
                per_device_query_batch_size=self.query_batch, per_device_train_batch_size=self.train_batch,
                score_args=score_args, overwrite_output_dir=True,
            )  # returns None; the scores are saved under the analysis' output dir
            done = time.perf_counter()
        pairwise = self.analyzer.load_pairwise_scores(scores_name=method)["all_modules"]
        scores = self.per_candidate(pairwise)
        info = _timing(self.n, fitted - started, done - fitted, rss.working_mb, meter)
        info |= {"strategy": strategy, "factors_fitted_on": "subject photos" if fit_on is self.query else "candidates",
                 "factor_examples": len(fit_on), "pairwise_shape": list(pairwise.shape)}
        return scores, info

    def per_candidate(self, pairwise: torch.Tensor) -> torch.Tensor:
        """Mean over queries (and over each candidate's K rows in the ``rows`` layout): ``[N]`` float64."""
        pairwise = pairwise.double()
        if self.layout == "rows":
            K = self.num_terms
            return pairwise.reshape(-1, self.n, K).mean(dim=(0, 2))
        return pairwise.mean(dim=0)


# --------------------------------------------------------------------------------------------
# Comparison, table
# --------------------------------------------------------------------------------------------


def agreement(scores: torch.Tensor, reference: torch.Tensor) -> dict:
    """Spearman, Pearson, the least-squares ratio ``scores ≈ ratio · reference``, sign agreement."""
    from scipy.stats import pearsonr, spearmanr

    a, b = scores.double().numpy(), reference.double().numpy()
    ratio = float((a * b).sum() / (b * b).sum())
    residual = a - ratio * b
    return {
        "spearman": float(spearmanr(a, b).statistic),
        "pearson": float(pearsonr(a, b).statistic),
        "ratio": ratio,
        "max_abs_residual_over_max_abs": float(abs(residual).max() / max(abs(a).max(), 1e-300)),
        "sign_agreement": float(((a > 0) == (b > 0)).mean()),
    }


LABELS = {
    "albat_identity": "ALBAT identity (fast path)",
    "albat_exact": "ALBAT exact (fast path)",
    "kronfluence_identity": "kronfluence identity",
    "kronfluence_ekfac": "kronfluence ekfac (factors on candidates)",
    "kronfluence_ekfac_subject": "kronfluence ekfac (factors on subject)",
}


def table(results: dict) -> str:
    lines = [
        "| method | fit s | score s | candidates/s (scoring) | candidates/s (end to end) | peak RSS MB "
        "| Spearman vs ALBAT identity | Spearman vs ALBAT exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in results["methods"].items():
        vs = row.get("vs", {})
        cells = [f"{vs[ref]['spearman']:.4f}" if ref in vs else "—" for ref in ("albat_identity", "albat_exact")]
        lines.append(
            f"| {LABELS.get(key, key)} | {row['fit_s']:.2f} | {row['score_s']:.2f} | "
            f"{row['candidates_per_s_scoring']:.2f} | {row['candidates_per_s_end_to_end']:.2f} | "
            f"{row['peak_rss_mb']:.0f} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("test", "demo"), default="test", help="tiny backbone size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (peak memory is RSS either way)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank of the surrogate")
    parser.add_argument("--num_timesteps", type=int, default=2, help="K, fixed timesteps (terms) per sample")
    parser.add_argument("--batch_size", type=int, default=8, help="candidates per forward (both sides)")
    parser.add_argument("--candidates", type=int, default=64, help="number of synthetic candidates N")
    parser.add_argument("--damping", type=float, default=0.1,
                        help="c: ALBAT's λ_l = c·mean‖g‖²/d_l; kronfluence ekfac: c·mean(Λ_l) per module")
    parser.add_argument("--albat", nargs="+", choices=ALBAT_STRATEGIES, default=list(ALBAT_STRATEGIES),
                        help="ALBAT directions to score with (identity is always computed: the reference)")
    parser.add_argument("--kronfluence", nargs="+", choices=KF_STRATEGIES, default=list(KF_STRATEGIES),
                        help="kronfluence methods (ekfac_subject: ekfac with factors fitted on the subject photos)")
    parser.add_argument("--layout", choices=("rows", "samples"), default="rows",
                        help="one kronfluence example per (sample, term) row, or per sample (see the docstring)")
    parser.add_argument("--fisher", choices=("empirical", "sampled"), default="empirical",
                        help="kronfluence factors from observed targets (as ALBAT) or sampled ones")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed after)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/kronfluence-<size>.json)")
    parser.add_argument("--table", metavar="JSON", default=None, help="print the table of a results JSON and exit")
    return parser.parse_args(argv)


def run(args) -> dict:
    """All measurements of one invocation; returns the results (scores included)."""
    from dreambat.albat import contracted_scores

    if kronfluence is None:
        raise SystemExit("kronfluence is not installed: pip install -e '.[bench]' (kronfluence==1.0.1)")
    torch.set_grad_enabled(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {
        "benchmark": "kronfluence side by side with ALBAT (benchmarks/bench_kronfluence.py)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "git_head": git_head(),
        "machine": machine_info() | {"kronfluence": kronfluence.__version__},
        "settings": vars(args).copy(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    started = time.perf_counter()
    scores: dict[str, torch.Tensor] = {}
    methods: dict[str, dict] = {}
    with scratch(args.workdir, "bench-kronfluence-") as workdir:
        surrogate = Surrogate(args, workdir)
        results["model"] = surrogate.describe()
        log(f"[setup] {results['model']}")
        # Warm-up, not timed (the first forward/backward pays for oneDNN and allocator set-up).
        from dreambat.albat import get_strategy
        from dreambat.albat import AlbatScorer

        warm = AlbatScorer(surrogate.task, surrogate.blocks, get_strategy("identity", args.damping))
        warm.fit(surrogate.reference[:1])
        contracted_scores(surrogate.task, surrogate.blocks, warm.directions, surrogate.candidates[0])
        del warm
        for strategy in dict.fromkeys(["identity", *args.albat]):
            gc.collect()
            scores[f"albat_{strategy}"], methods[f"albat_{strategy}"] = albat_scores(surrogate, strategy, args.damping)
            log(f"[albat {strategy}] {methods[f'albat_{strategy}']}")
        kf = Kronfluence(surrogate, args, workdir)
        results["kronfluence"] = {
            "layout": args.layout, "fisher": args.fisher, "tracked_modules": len(kf.task.tracked_modules),
            "train_examples": len(kf.train), "query_examples": len(kf.query),
            "per_device_train_batch_size": kf.train_batch, "per_device_query_batch_size": kf.query_batch,
            "damping": f"damping_factor=None, HEURISTIC_DAMPING_SCALE={args.damping}: {args.damping}·mean(Λ) per module",
        }
        for method in args.kronfluence:
            gc.collect()
            key = f"kronfluence_{method}"
            scores[key], methods[key] = kf.run(method)
            log(f"[kronfluence {method}] {methods[key]}")
        if args.layout == "samples" and surrogate.task.num_terms > 1 and "kronfluence_identity" in scores:
            results["samples_layout_check"] = samples_layout_check(surrogate, args, scores["kronfluence_identity"])
    for key, value in methods.items():
        value["vs"] = {ref: agreement(scores[key], scores[ref]) for ref in ("albat_identity", "albat_exact")
                       if ref in scores and ref != key}
    results["methods"] = methods
    if surrogate.num_candidates <= 1024:
        results["scores"] = {key: value.tolist() for key, value in scores.items()}
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"kronfluence-{args.size}.json"
    results = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    log(f"wrote {out} ({results['total_seconds']}s)")


if __name__ == "__main__":
    main()
