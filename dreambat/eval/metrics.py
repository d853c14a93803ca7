"""DreamBench metrics as pure functions of embeddings: DINO, CLIP-I, CLIP-T, and DreamBooth's PRES and DIV.

All three are **raw cosine similarities**: not multiplied by 100, not clipped at 0, averaged in
float64. The encoders (:mod:`dreambat.eval.encoders`) return unnormalised embeddings; every
function here L2-normalises its inputs itself, so callers never have to.

- **DINO** = :func:`mean_pairwise_cosine` of the DINO CLS embeddings of the generated images
  ``[N, D]`` and the real subject images ``[M, D]``: the mean over all ``N * M`` pairs.
- **CLIP-I** = the same with CLIP image embeddings.
- **CLIP-T** = :func:`mean_paired_cosine` of the CLIP image embedding of each generated image and
  the CLIP text embedding of *its* prompt, where the prompt is the DreamBench template with the
  unique token removed and the class noun kept ("a dog in the jungle", not "a sks dog ...").

- **PRES** (prior preservation, lower is better) = :func:`pres_score`: the DINO score of images of
  the *class prompt* ("a photo of a dog", no unique token) generated with the LoRA, against the
  real subject photos. High: the class prior collapsed onto the subject.
- **DIV** (diversity, higher is better) = :func:`div_score`: the mean ``1 - cos`` over pairs
  ``i != j`` of the DINO embeddings of N images of one prompt. DreamBooth measures it with LPIPS;
  here DINO features stand in, since LPIPS weights cannot be fetched offline, so DIV values are
  not comparable with the paper's.

Comparing a set with itself (``b=None``) skips the ``N`` self-pairs, which always score 1: that is
how the "real images" reference row (real vs. real) is measured.
"""

from __future__ import annotations

import math

import torch

from .constants import METRIC_LABELS, METRIC_NAMES

__all__ = ["METRIC_LABELS", "METRIC_NAMES", "clip_i_score", "clip_t_score", "cosine_matrix", "dino_score",
           "div_score", "mean_paired_cosine", "mean_pairwise_cosine", "pres_score"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``[N, D]`` scaled to unit L2 norm, in float64."""
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape [N, D], got {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` float64 cosine similarities between the rows of ``a`` ``[N, D]`` and ``b`` ``[M, D]``."""
    return _unit(a) @ _unit(b).T


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    """Mean cosine over every pair ``(a_i, b_j)``; with ``b=None``, over pairs ``i != j`` of ``a``.

    Args:
        a: ``[N, D]`` embeddings (e.g. generated images).
        b: ``[M, D]`` embeddings (e.g. real subject images), or ``None`` to compare ``a`` with
            itself without its ``N`` self-pairs (needs ``N >= 2``).

    Returns:
        ``sum_ij cos(a_i, b_j) / (N * M)``, or ``sum_{i != j} cos(a_i, a_j) / (N * (N - 1))``.
    """
    if b is None:
        n = a.shape[0]
        if n < 2:
            return math.nan
        sims = cosine_matrix(a, a)
        return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
    if a.shape[0] == 0 or b.shape[0] == 0:
        return math.nan
    return float(cosine_matrix(a, b).mean())


def mean_paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of ``cos(a_i, b_i)`` over rows; ``a`` and ``b`` are ``[N, D]``, or ``b`` is ``[1, D]`` (broadcast)."""
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"paired cosine needs the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] == 0:
        return math.nan
    return float((_unit(a) * _unit(b)).sum(dim=1).mean())


def dino_score(generated: torch.Tensor, real: torch.Tensor) -> float:
    """DINO: mean pairwise cosine of DINO CLS embeddings, generated ``[N, D]`` x real ``[M, D]``."""
    return mean_pairwise_cosine(generated, real)


def clip_i_score(generated: torch.Tensor, real: torch.Tensor) -> float:
    """CLIP-I: mean pairwise cosine of CLIP image embeddings, generated ``[N, D]`` x real ``[M, D]``."""
    return mean_pairwise_cosine(generated, real)


def clip_t_score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> float:
    """CLIP-T: mean cosine of each image ``[N, D]`` with its own prompt's text embedding ``[N, D]``."""
    return mean_paired_cosine(image_embeddings, text_embeddings)


def pres_score(class_generated: torch.Tensor, real: torch.Tensor) -> float:
    """PRES: mean pairwise cosine of the DINO embeddings of class-prompt images ``[N, D]`` x real photos ``[M, D]``."""
    return mean_pairwise_cosine(class_generated, real)


def div_score(generated: torch.Tensor) -> float:
    """DIV: mean ``1 - cos`` over pairs ``i != j`` of the DINO embeddings ``[N, D]`` of one prompt's images.

    0 when all images are the same; NaN with fewer than two images.
    """
    return 1.0 - mean_pairwise_cosine(generated)
