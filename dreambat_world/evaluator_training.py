"""Training the world's attribute classifier on freshly rendered scenes, and measuring it.

Images are drawn on the fly (rendering a 32 px scene costs well under a millisecond, far less than
a training step), so every step sees new scenes and no epoch or data set is stored. Training and
held-out scenes come from disjoint record seeds (:data:`TRAIN_SEED`, :data:`HELDOUT_SEED`), both
apart from the backbone pool's.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dreambat.data.shard_writer import encode_image
from dreambat.errors import ConfigError

from .classifiers import (
    HALF_AND_HALF_PATTERNS,
    AttributeClassifier,
    AttributeNet,
    ClassifierConfig,
    images_to_tensor,
    main_object_labels,
)
from .synthetic import random_scene, record_rng, render

logger = logging.getLogger(__name__)

TRAIN_SEED = 7_100
"""Record seed of the evaluators' training scenes (the backbone pool uses small seeds)."""
HELDOUT_SEED = 7_200
"""Record seed of the held-out scenes the evaluators are measured on."""


@dataclass(frozen=True)
class TrainBudget:
    """How long and how an evaluator trains.

    Attributes:
        steps: most optimiser steps.
        max_minutes: wall-clock budget; training stops at whichever of steps/minutes comes first.
        batch_size: scenes per step.
        lr: AdamW learning rate (cosine-decayed to 5% over ``steps``).
        weight_decay: AdamW weight decay.
        seed: torch seed (initialisation, augmentation) and offset of the scene stream.
        log_every: steps between log lines.
    """

    steps: int = 3000
    max_minutes: float = 10.0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.max_minutes <= 0 or self.lr <= 0:
            raise ConfigError(f"TrainBudget needs steps >= 1, batch_size >= 2, max_minutes > 0, lr > 0; got {self}.")


def cosine_lr(step: int, budget: TrainBudget, elapsed_s: float = 0.0) -> float:
    """Learning rate at ``step``: cosine from ``lr`` to 5% of it over the budget.

    Progress is the larger of ``step / steps`` and ``elapsed_s / max_minutes``, so a run cut short
    by its wall-clock budget still ends with a decayed learning rate.
    """
    progress = min(1.0, max(step / budget.steps, elapsed_s / (60 * budget.max_minutes)))
    return budget.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


def train_within_budget(model: torch.nn.Module, loss_at: Callable[[int], torch.Tensor], budget: TrainBudget,
                        name: str, after_step: Callable[[], None] | None = None) -> dict:
    """AdamW on ``model`` with :func:`cosine_lr`, until ``budget.steps`` or ``budget.max_minutes``.

    Args:
        loss_at: the loss of step ``step`` (1-based); it draws its own batch.
        name: the log lines' prefix.
        after_step: run after each optimiser step (e.g. clamping a parameter).

    Returns:
        ``{"steps", "seconds", "final_loss" (mean of the last 50), "params"}``; ``model`` is left
        in eval mode.
    """
    optimiser = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    start, losses, step = time.monotonic(), [], 0
    model.train()
    while step < budget.steps and time.monotonic() - start < 60 * budget.max_minutes:
        step += 1
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, budget, time.monotonic() - start)
        loss = loss_at(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if step % budget.log_every == 0:
            logger.info("%s step %d loss %.4f (%.0f s)", name, step, np.mean(losses[-budget.log_every:]),
                        time.monotonic() - start)
    model.eval()
    return {"steps": step, "seconds": round(time.monotonic() - start, 1),
            "final_loss": float(np.mean(losses[-50:])), "params": sum(p.numel() for p in model.parameters())}


def single_object_scenes(n: int, seed: int, *, start: int = 0, size: int = 32):
    """``n`` rendered single-object scenes -> ``(images, labels)``; record ``i`` uses ``record_rng(seed, i)``."""
    images, labels = [], []
    for index in range(start, start + n):
        rng = record_rng(seed, index)
        scene = random_scene(rng, max_objects=1)
        images.append(render(scene, size, rng))
        labels.append(main_object_labels(scene.attributes()))
    return images, labels


def degrade(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur and noise on ``[N, 3, H, W]`` pixels in [-1, 1], so the classifier also reads
    the softer, noisier images a small diffusion model draws."""
    n = pixels.shape[0]
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    mix = (torch.rand(n, 1, 1, 1, generator=generator) < 0.5).float() * torch.rand(n, 1, 1, 1, generator=generator)
    noise = torch.randn(pixels.shape, generator=generator) * 0.1 * torch.rand(n, 1, 1, 1, generator=generator)
    return (pixels + mix * (blurred - pixels) + noise).clamp(-1, 1)


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as a JPEG of ``quality`` (4:2:0 chroma) and decoded again."""
    return Image.open(io.BytesIO(encode_image(image, "JPEG", int(quality)))).convert("RGB")


def degrade_for_reading(images: Sequence[Image.Image], size: int, generator: torch.Generator, *,
                        jpeg: tuple[float, int, int] = (0.5, 30, 95),
                        coarse: tuple[float, int, int] = (1 / 3, 16, 28)) -> torch.Tensor:
    """The attribute classifier's augmentation: PIL images -> ``[N, 3, size, size]`` in [-1, 1].

    Besides :func:`degrade`'s blur and noise, a fraction ``jpeg[0]`` of the images is
    JPEG-compressed at a quality drawn from ``jpeg[1]..jpeg[2]`` (blocky, chroma-subsampled
    edges that shift hues) and a fraction ``coarse[0]`` is resampled through a coarser grid of
    ``coarse[1]..coarse[2]`` px (bilinear: the softness of a decoder working from a 2x smaller
    latent). Generic degradations, none taken from a particular backbone, so that the classifier
    reads a colour or a shape in a softened or artefacted sample as it does in a clean render;
    measured by :func:`measure_classifier` (``jpeg75``, ``soft``). With these defaults a
    classifier reads JPEG-75 scenes far better but clean shapes a little worse (small objects
    lose their corners at quality 30 or through 16 px); see BENCHMARKS.md.
    """
    n = len(images)
    use_jpeg = torch.rand(n, generator=generator) < jpeg[0]
    quality = torch.randint(jpeg[1], jpeg[2] + 1, (n,), generator=generator)
    images = [jpeg_round_trip(im, int(q)) if j else im for im, j, q in zip(images, use_jpeg, quality)]
    pixels = images_to_tensor(images, size)
    sides = torch.randint(coarse[1], coarse[2] + 1, (n,), generator=generator)
    for i in torch.nonzero(torch.rand(n, generator=generator) < coarse[0]).flatten().tolist():
        small = F.interpolate(pixels[i:i + 1], size=int(sides[i]), mode="bilinear", antialias=True,
                              align_corners=False)
        pixels[i:i + 1] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return degrade(pixels, generator)


class VaeRoundTrip:
    """A backbone VAE's round trip as a classifier augmentation: encode to the posterior mean,
    decode. The world's samples are decoded latents, so the reader must read a subject as it
    comes out of this decoder (dots blurred, a purple body greyed by its yellow dots), not only
    as it is rendered.

    Args:
        vae: the backbone's ``AutoencoderKL`` (used without gradients).
        fraction: share of each batch sent through the round trip.
    """

    def __init__(self, vae, fraction: float = 0.5):
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"VaeRoundTrip: fraction must be in (0, 1], got {fraction}.")
        self.vae = vae.eval().requires_grad_(False)
        self.fraction = fraction

    @classmethod
    def from_backbone(cls, folder: str | Path, fraction: float = 0.5) -> VaeRoundTrip:
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True), fraction)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``pixels`` ``[N, 3, H, W]`` in [-1, 1], a seeded ``fraction`` of them round-tripped."""
        chosen = torch.nonzero(torch.rand(pixels.shape[0], generator=generator) < self.fraction).flatten()
        if len(chosen):
            pixels = pixels.clone()
            pixels[chosen] = vae_round_trip(self.vae, pixels[chosen])
        return pixels


@torch.no_grad()
def vae_round_trip(vae, pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` ``[N, 3, H, W]`` in [-1, 1] encoded to the posterior mean and decoded again."""
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return vae.decode(latents).sample.clamp(-1, 1).to(pixels.device, pixels.dtype)


def soften(image: Image.Image) -> Image.Image:
    """A fixed mild softening for measurement: through a 24 px grid and back (bilinear)."""
    size = image.size
    return image.convert("RGB").resize((24, 24), Image.BILINEAR).resize(size, Image.BILINEAR)


IGNORE = -100
"""Target of a head with no label for an image (``pattern_color`` of a plain object)."""


def _label_batches(config: ClassifierConfig, budget: TrainBudget
                   ) -> Iterator[tuple[list[Image.Image], dict[str, torch.Tensor], torch.Tensor]]:
    """Endless ``(images, {head: target ids}, half-and-half mask)`` batches of fresh scenes."""
    index = budget.seed * 10_000_000
    while True:
        images, labels = single_object_scenes(budget.batch_size, TRAIN_SEED, start=index, size=config.image_size)
        index += budget.batch_size
        targets = {head: torch.tensor([names.index(lab[head]) if head in lab else IGNORE for lab in labels])
                   for head, names in config.heads.items()}
        halves = torch.tensor([lab["pattern"] in HALF_AND_HALF_PATTERNS for lab in labels])
        yield images, targets, halves


def attribute_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                   halves: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy (unlabelled entries, :data:`IGNORE`, left out).

    On half-and-half objects (``halves``, ``[N]`` bool) the ``color`` and ``pattern_color`` heads
    are scored order-free: each such image pays the cheaper of the two ways to assign its two
    colours to the heads, since the image does not say which is which. Without that, both heads
    learn to split their belief between the two colours and often name the same one.
    """
    per_image = {head: F.cross_entropy(value, targets[head], ignore_index=IGNORE, reduction="none")
                 for head, value in logits.items()}
    paired = {"color", "pattern_color"} if "pattern_color" in logits else set()
    total = 0.0
    for head in logits:
        labelled = int((targets[head] != IGNORE).sum())
        if labelled and head not in paired:
            total = total + per_image[head].sum() / labelled
    if paired:
        direct = per_image["color"] + per_image["pattern_color"]  # 0 for plain objects' pattern colour
        swapped = (F.cross_entropy(logits["color"], targets["pattern_color"].clamp_min(0), reduction="none")
                   + F.cross_entropy(logits["pattern_color"], targets["color"], reduction="none"))
        total = total + torch.where(halves, torch.minimum(direct, swapped), direct).mean()
    return total


def train_classifier(config: ClassifierConfig = ClassifierConfig(), budget: TrainBudget = TrainBudget(),
                     *, robust: bool = False, round_trip: VaeRoundTrip | None = None) -> tuple[AttributeClassifier, dict]:
    """Train an :class:`AttributeNet` (:func:`attribute_loss`) within ``budget``.

    ``robust``: augment with :func:`degrade_for_reading` (JPEG, resampling, blur, noise) instead
    of :func:`degrade`'s blur and noise only. Measured on the world backbone's samples it reads
    colours better and shapes worse (see BENCHMARKS.md), so it is not the default.
    ``round_trip``: first send part of each batch through a backbone VAE (:class:`VaeRoundTrip`).

    Returns the classifier (eval mode, CPU) and the log of :func:`train_within_budget`.
    """
    torch.manual_seed(budget.seed)
    generator = torch.Generator().manual_seed(budget.seed)
    net = AttributeNet(config)
    batches = _label_batches(config, budget)

    def loss_at(step: int) -> torch.Tensor:
        images, targets, halves = next(batches)
        if robust:
            pixels = degrade_for_reading(images, config.image_size, generator)
        else:
            pixels = images_to_tensor(images, config.image_size)
            if round_trip is not None:
                pixels = round_trip(pixels, generator)
            pixels = degrade(pixels, generator)
        return attribute_loss(net(pixels), targets, halves)

    log = train_within_budget(net, loss_at, budget, "classifier")
    return AttributeClassifier(net.eval()), log


def measure_classifier(classifier: AttributeClassifier, n: int = 1000, seed: int = HELDOUT_SEED) -> dict[str, Any]:
    """Per-head accuracy (and ``"all"``) on ``n`` fresh single-object scenes of record seed ``seed``.

    Also ``"color|PATTERN"``: colour accuracy per pattern, strict (the predicted ``color`` must
    be the scene's object colour, which on stripes and checks is a convention the image does not
    show; ``agreement`` scores those order-free when the classifier has a ``pattern_color`` head),
    and the agreement on the same scenes degraded: ``"jpeg75"`` (JPEG quality 75) and ``"soft"``
    (:func:`soften`), each ``{head: rate}``.
    """
    images, labels = single_object_scenes(n, seed, size=classifier.config.image_size)
    predictions = classifier.predict(images)
    scores: dict[str, Any] = classifier.agreement_of(predictions, labels)
    for pattern in classifier.config.heads.get("pattern", []):
        hits = [p["color"] == t["color"] for p, t in zip(predictions, labels) if t["pattern"] == pattern]
        if hits:
            scores[f"color|{pattern}"] = float(np.mean(hits))
    scores["jpeg75"] = classifier.agreement([jpeg_round_trip(im, 75) for im in images], labels)
    scores["soft"] = classifier.agreement([soften(im) for im in images], labels)
    return scores


def save_training_report(folder: str | Path, name: str, report: dict) -> Path:
    """Write ``report`` (with the budget and measurements) as ``folder/training_report.json``."""
    path = Path(folder) / "training_report.json"
    path.write_text(json.dumps({"evaluator": name, **report}, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings ``a, b [N, D]`` (row ``i`` of each is a positive pair).

    ``temperature`` divides the cosine similarities; the loss is the mean of the a->b and b->a
    cross-entropies over the ``N`` candidates.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def retrieval_scores(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Retrieval of paired embeddings ``a, b [N, D]``: top-1/top-5 a->b and b->a, and mean cosines.

    ``match_cosine`` averages the ``N`` paired cosines, ``mismatch_cosine`` the ``N(N-1)`` others.
    """
    sims = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    n = sims.shape[0]
    target = torch.arange(n)[:, None]

    def top(s: torch.Tensor, k: int) -> float:
        return float((s.topk(min(k, n), dim=1).indices == target).any(dim=1).float().mean())

    off = ~torch.eye(n, dtype=torch.bool)
    return {"n": n, "a_to_b_top1": top(sims, 1), "a_to_b_top5": top(sims, 5), "b_to_a_top1": top(sims.T, 1),
            "b_to_a_top5": top(sims.T, 5), "match_cosine": float(sims.diag().mean()),
            "mismatch_cosine": float(sims[off].mean())}
