"""Gradients of per-sample losses w.r.t. LoRA blocks: explicit rows, and contracted scores.

Two ways to get ``Z(x) = Σ_l ⟨h_l, ∇_{θ_l} ℓ(x)⟩`` for a batch:

* :func:`reference_scores`: one ``backward()`` per sample, explicit gradients, explicit dot
  products. Slow and obviously correct; the yardstick for tests and benchmarks.
* :func:`contracted_scores`: one forward and one backward for the whole batch. Every LoRA factor
  is linear in its weight, e.g. ``y = x Wᵀ`` for a Linear one, so sample i's gradient is
  ``Σ_t g_{i,t} x_{i,t}ᵀ`` (``g`` the gradient at the output, ``t`` over tokens/positions) and
  ``⟨H, ∇_W ℓ_i⟩ = Σ_t g_{i,t} · (H x_{i,t})``. Hooks compute that inside the backward pass, so
  no per-sample gradient is ever materialised: the extra work per layer is one small matmul, and
  memory is that of an ordinary training step. Layer types are dispatched by
  :mod:`dreambat.albat.layers` (``nn.Linear`` and ``nn.Conv2d`` factors).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import LoraBlocks
from .layers import directional_output_for
from .task import ScoringTask, as_matrix, split_batch


def reference_rows(task: ScoringTask, blocks: LoraBlocks, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Explicit per-term gradients of the adaptation (subject) data: the reference set R.

    Each (sample, term) pair is one row: one forward per batch, one ``backward`` per row.

    Returns:
        ``{block name: [n_ref, d_l]}`` with ``n_ref = Σ B·K`` over ``batches``, rows ordered
        sample-major (sample i's K terms are consecutive).
    """
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in blocks.names}
    for batch in batches:
        losses = as_matrix(task.loss_matrix(batch))
        n_rows, n_terms = losses.shape
        for i in range(n_rows):
            for k in range(n_terms):
                blocks.zero_grad()
                last = i == n_rows - 1 and k == n_terms - 1
                losses[i, k].backward(retain_graph=not last)
                for name, grad in blocks.flat_grads().items():
                    rows[name].append(grad)
    blocks.zero_grad()
    if not rows[blocks.names[0]]:
        raise ConfigError(
            "No reference gradients: the subject data produced no loss terms. Check that the "
            "subject folder has images and that the number of timesteps K is at least 1."
        )
    return {name: torch.stack(grads) for name, grads in rows.items()}


def _sample_losses(task: ScoringTask, batch: Any) -> torch.Tensor:
    return as_matrix(task.loss_matrix(batch)).mean(dim=1)


def reference_scores(
    task: ScoringTask, blocks: LoraBlocks, directions: Mapping[str, torch.Tensor], batch: Any
) -> torch.Tensor:
    """``Z`` of each sample of ``batch`` by the plain per-sample loop. ``[B]`` float64.

    For each sample alone: forward, ``loss.backward()``, read every block's ``.grad``, dot it with
    ``h_l`` in float64. No hooks, no batching tricks: the yardstick for the fast path.
    """
    scores = []
    for single in split_batch(batch):
        blocks.zero_grad()
        loss = _sample_losses(task, single)[0]
        if not torch.isfinite(loss):
            scores.append(float("nan"))
            continue
        loss.backward()
        grads = blocks.flat_grads()
        scores.append(
            sum(torch.dot(directions[name].double(), grads[name].double()).item() for name in blocks.names)
        )
    blocks.zero_grad()
    return torch.tensor(scores, dtype=torch.float64)


class _Contraction:
    """Forward/backward hooks contracting each LoRA factor's per-row gradient with its direction."""

    def __init__(self, blocks: LoraBlocks, directions: Mapping[str, torch.Tensor]):
        self.partials: list[torch.Tensor] = []
        self.handles = []
        for name, param, module in zip(blocks.names, blocks.params, blocks.modules):
            directional_output = directional_output_for(name, module)
            matrix = directions[name].reshape(param.shape).to(device=param.device, dtype=torch.float32)
            self.handles.append(module.register_forward_hook(self._forward_hook(directional_output, matrix)))

    def _forward_hook(self, directional_output, matrix: torch.Tensor):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            x = inputs[0].detach()

            def on_grad(grad: torch.Tensor) -> None:
                projected = directional_output(module, x.float(), matrix)  # f(x; H), shaped like the output
                contribution = (grad.float() * projected).reshape(grad.shape[0], -1).sum(dim=1)
                self.partials.append(contribution)

            output.register_hook(on_grad)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def contracted_scores(
    task: ScoringTask, blocks: LoraBlocks, directions: Mapping[str, torch.Tensor], batch: Any
) -> torch.Tensor:
    """``Z`` of each sample of ``batch`` with one forward and one backward, no per-sample gradients.

    Args:
        task: gives the loss matrix; rows inside the model must be sample-major (see
            :mod:`dreambat.albat.task`).
        blocks: the LoRA blocks; every factor's type must be registered in :mod:`.layers`.
        directions: ``{block name: h_l [d_l]}``, the preconditioned direction.
        batch: whatever ``task.loss_matrix`` takes.

    Returns:
        ``[B]`` float64 scores; NaN for a sample whose loss is not finite.
    """
    contraction = _Contraction(blocks, directions)
    try:
        losses = _sample_losses(task, batch)
        n = losses.shape[0]
        finite = torch.isfinite(losses)
        total = torch.where(finite, losses, torch.zeros_like(losses)).sum()
        torch.autograd.grad(total, list(blocks.params), allow_unused=True)
    finally:
        contraction.remove()
    scores = torch.zeros(n, dtype=torch.float64, device=losses.device)
    for partial in contraction.partials:
        rows = partial.shape[0]
        if rows % n:
            raise ConfigError(
                f"A LoRA layer saw {rows} rows for a batch of {n} samples; the task must run the "
                "model on a whole multiple of the batch, grouped sample-major."
            )
        scores += partial.reshape(n, rows // n).sum(dim=1).double()
    scores[~finite] = float("nan")
    return scores.cpu()
