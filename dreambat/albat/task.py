"""The one contract between ALBAT and a model: per-sample losses.

ALBAT never sees model-specific code. A task turns a batch into a loss *matrix* ``[B, K]``: row i
holds the K loss terms of sample i (for diffusion: K fixed timesteps), each depending on sample i
alone, and the per-sample loss is their mean, ``ℓ(x_i) = losses[i].mean()``. A task with a single
term per sample returns ``[B]``, read as ``[B, 1]``.

When the model inside runs on more rows than samples (a diffusion task feeds ``B·K`` noised
latents to the UNet), those rows must be grouped sample-major: rows ``i·m .. i·m+m-1`` belong to
sample ``i``. The fast scoring path relies on it to attribute each row's contribution; per-term
results (reference rows, split-half estimates) need one row per (sample, term), ``m = K``.

Two optional methods make a task's terms Monte Carlo draws that ALBAT can treat as such:

* ``term_halves() -> (first, second)``: two disjoint lists of term indices whose means are
  independent estimates of the same loss. With them every run reports the split-half
  reliability of its ranking (:mod:`dreambat.albat.reliability`).
* ``term_groups() -> [K]``: a group id per term (e.g. its timestep stratum), for
  ``AlbatScorer(normalize_terms=True)``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ScoringTask(Protocol):
    """What ALBAT needs from a model: per-sample, per-term losses of a batch."""

    def loss_matrix(self, batch: Any) -> torch.Tensor:
        """Losses ``[B, K]`` (or ``[B]``) of ``batch`` at the model's current parameters."""
        ...

    def batch_size(self, batch: Any) -> int:
        """Number of samples B in ``batch``."""
        ...


def as_matrix(losses: torch.Tensor) -> torch.Tensor:
    """View a task's losses as ``[B, K]``."""
    if losses.ndim == 1:
        return losses[:, None]
    if losses.ndim != 2:
        raise ValueError(f"A task's loss_matrix must be [B] or [B, K], got shape {tuple(losses.shape)}.")
    return losses


def split_batch(batch: Any) -> list[Any]:
    """Split a batch into single-sample batches (for the per-sample reference loop).

    Handles the batch types dreambat's tasks use: a dict or tuple/list whose entries are tensors
    or lists with the batch along their first axis.
    """
    if isinstance(batch, dict):
        n = len(next(iter(batch.values())))
        return [{key: value[i : i + 1] for key, value in batch.items()} for i in range(n)]
    if isinstance(batch, (tuple, list)):
        n = len(batch[0])
        return [type(batch)(value[i : i + 1] for value in batch) for i in range(n)]
    raise TypeError(f"Cannot split a batch of type {type(batch).__name__}; pass a dict, tuple or list.")
