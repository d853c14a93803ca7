"""Gradients of per-sample losses w.r.t. LoRA blocks: explicit rows, and contracted scores.

A task's losses are a matrix ``[B, K]``: K terms per sample (for diffusion, K Monte Carlo draws of
timestep and noise), the per-sample loss being their (optionally weighted) mean. The model inside
runs on one *row* per (sample, term), sample-major, and every LoRA factor is linear in its weight,
e.g. ``y = x Wᵀ`` for a Linear one. A row's weight gradient is then ``Σ_t g_t x_tᵀ`` (``g`` the
gradient at the factor's output, ``t`` over its tokens/positions), and its directional derivative
along ``H`` is ``Σ_t g_t · (H x_t)``. Hooks on the factors read ``x`` in the forward pass and ``g``
in the backward pass, so one forward and one backward of a batch give:

* :func:`reference_rows`: the explicit per-row gradients of the adaptation (reference) data;
* :func:`contracted_terms`: every row's directional derivative along one or more directions,
  without materialising any per-sample gradient (the extra work per layer is one small matmul
  per direction; memory is that of a training step). :func:`contracted_scores` sums them into
  the scores ``Z(x) = Σ_l ⟨h_l, ∇_{θ_l} ℓ(x)⟩``.

:func:`reference_scores` and :func:`reference_term_scores` compute the same numbers with plain
``backward()`` calls and explicit dot products: slow and obviously correct, the yardstick of the
tests. Layer types are dispatched by :mod:`dreambat.albat.layers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import LoraBlocks
from .layers import UnsupportedAdapterError, directional_output_for, per_row_gradient_for
from .task import ScoringTask, as_matrix, split_batch


class _Hooks:
    """Forward/backward hooks on every LoRA factor; ``on_backward(index, module, x, g)`` per call."""

    def __init__(self, blocks: LoraBlocks, on_backward):
        self.handles = []
        for index, module in enumerate(blocks.modules):
            self.handles.append(module.register_forward_hook(self._forward_hook(index, on_backward)))

    @staticmethod
    def _forward_hook(index: int, on_backward):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            x = inputs[0].detach()
            output.register_hook(lambda grad: on_backward(index, module, x, grad.detach()))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _compute_dtype(module: nn.Module) -> torch.dtype:
    """float64 for float64 weights, else float32 (half-precision models are contracted in float32)."""
    return torch.float64 if module.weight.dtype == torch.float64 else torch.float32


def _weighted_terms(task: ScoringTask, batch: Any, weights: torch.Tensor | None) -> torch.Tensor:
    """The task's ``[B, K]`` losses, each term multiplied by its weight (``None``: all 1)."""
    losses = as_matrix(task.loss_matrix(batch))
    return losses if weights is None else losses * weights.to(losses)[None, :]


def _check_hooked(blocks: LoraBlocks, grads: tuple[torch.Tensor | None, ...], hooked: set[int]) -> None:
    """Refuse a block whose weight got a gradient that its factor's forward did not carry.

    Hooks see a factor only through its forward call. A peft layer that uses the factor weights
    directly (its LoRA for ``nn.MultiheadAttention`` merges them into the attention weights) would
    otherwise give that block zero rows and zero scores.
    """
    for index, grad in enumerate(grads):
        if grad is not None and index not in hooked:
            module = blocks.modules[index]
            raise UnsupportedAdapterError(
                blocks.names[index], type(module).__name__,
                "its weight receives a gradient, but the factor layer's forward never runs: the LoRA layer "
                "that holds it uses the weight directly, so the core cannot read the factor's input and "
                "output gradient",
                "leave this layer out of the adapter's target_modules",
            )


def _rows_per_term(rows: int, n: int, k: int, name: str) -> None:
    if rows != n * k:
        raise ConfigError(
            f"LoRA block '{name}' saw {rows} rows for {n} samples x {k} terms; per-term gradients need "
            "the task to run the model on one row per (sample, term), grouped sample-major."
        )


def reference_rows(
    task: ScoringTask, blocks: LoraBlocks, batches: Iterable[Any], *, weights: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Explicit per-term gradients of the adaptation (reference) data: the reference set R.

    One forward and one backward per batch; hooks turn each factor's inputs and output gradients
    into the gradient of every row.

    Args:
        weights: ``[K]`` term weights (a row's gradient is that of ``weights[k] · ℓ_k``).

    Returns:
        ``{block name: [n_ref, d_l]}`` float32 with ``n_ref = Σ B·K`` over ``batches``, rows ordered
        sample-major (sample i's K terms are consecutive), so row r is term ``r % K``.
    """
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in blocks.names}
    for batch in batches:
        found: dict[int, torch.Tensor] = {}

        def on_backward(index: int, module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
            dtype = _compute_dtype(module)
            per_row = per_row_gradient_for(blocks.names[index], module)(module, x.to(dtype), grad.to(dtype))
            found[index] = found[index] + per_row if index in found else per_row

        hooks = _Hooks(blocks, on_backward)
        try:
            losses = _weighted_terms(task, batch, weights)
            n, k = losses.shape
            grads = torch.autograd.grad(losses.sum(), list(blocks.params), allow_unused=True)
        finally:
            hooks.remove()
        _check_hooked(blocks, grads, set(found))
        for index, name in enumerate(blocks.names):
            if index not in found:
                rows[name].append(torch.zeros(n * k, blocks.params[index].numel(), dtype=_compute_dtype(blocks.modules[index])))
                continue
            _rows_per_term(found[index].shape[0], n, k, name)
            rows[name].append(found[index].reshape(n * k, -1).cpu())
    if not rows[blocks.names[0]]:
        raise ConfigError(
            "No reference gradients: the subject data produced no loss terms. Check that the "
            "subject folder has images and that the number of timesteps K is at least 1."
        )
    return {name: torch.cat(grads) for name, grads in rows.items()}


def _stack_directions(blocks: LoraBlocks, directions: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per block, the directions as ``[n_dir, *weight.shape]`` float32 on the weight's device."""
    stacked = []
    for name, param in zip(blocks.names, blocks.params):
        h = directions[name]
        h = h.reshape(-1, param.numel()) if h.ndim == 2 else h.reshape(1, -1)
        stacked.append(h.reshape(-1, *param.shape).to(device=param.device, dtype=torch.float32))
    return stacked


@dataclass(frozen=True)
class ContractedTerms:
    """What one forward and one backward of a candidate batch give (:func:`contract_batch`).

    Attributes:
        terms: ``[B, K, n_dir]`` float64, entry ``(i, k, j) = ⟨h_j, g_ik⟩`` with
            ``g_ik = ∇ (weights[k] · ℓ_k(x_i)) / K``, so summing over k gives the score of the mean loss.
        losses: ``[B]`` float64, each sample's mean unweighted loss over its K terms.
        term_norms: ``[B, K]`` float64 ``‖g_ik‖`` over all blocks (``None`` unless asked for).
        sample_norms: ``[B]`` float64 ``‖Σ_k g_ik‖``, the norm of the sample's loss gradient
            (``None`` unless asked for).

    Rows of samples whose loss is not finite are NaN.
    """

    terms: torch.Tensor
    losses: torch.Tensor
    term_norms: torch.Tensor | None = None
    sample_norms: torch.Tensor | None = None


def contracted_terms(
    task: ScoringTask,
    blocks: LoraBlocks,
    directions: Mapping[str, torch.Tensor],
    batch: Any,
    *,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each term's contribution to ``Z`` along each direction: ``[B, K, n_dir]`` float64.

    Entry ``(i, k, j)`` is ``⟨h_j, ∇ (weights[k] · ℓ_k(x_i)) / K⟩``, so summing over k gives the
    score of the (weighted) mean loss. One forward and one backward for the whole batch.

    Args:
        directions: ``{block name: [d_l]}`` (one direction) or ``[n_dir, d_l]``.
        weights: ``[K]`` term weights (``None``: all 1).

    Returns:
        NaN rows for samples whose loss is not finite.
    """
    return contract_batch(task, blocks, directions, batch, weights=weights).terms


def contract_batch(
    task: ScoringTask,
    blocks: LoraBlocks,
    directions: Mapping[str, torch.Tensor],
    batch: Any,
    *,
    weights: torch.Tensor | None = None,
    norms: bool = False,
) -> ContractedTerms:
    """:func:`contracted_terms`, the samples' losses and, with ``norms``, the gradient norms of every
    term and every sample, from the same forward and backward.

    The norms need each row's gradient of each block (``[B·K, d_l]``, one block at a time kept
    until the backward ends), as :func:`reference_rows` computes them for the reference set; the
    scores themselves never materialise a gradient.
    """
    matrices = _stack_directions(blocks, directions)
    partials: list[tuple[int, torch.Tensor]] = []
    row_grads: dict[int, torch.Tensor] = {}

    def on_backward(index: int, module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
        directional_output = directional_output_for(blocks.names[index], module)
        dtype = _compute_dtype(module)
        grad, x = grad.to(dtype), x.to(dtype)
        contributions = [
            (grad * directional_output(module, x, h.to(dtype))).reshape(grad.shape[0], -1).sum(dim=1)
            for h in matrices[index]
        ]
        partials.append((index, torch.stack(contributions, dim=1)))
        if norms:  # a factor called twice in one forward adds up, as its weight gradient does
            per_row = per_row_gradient_for(blocks.names[index], module)(module, x, grad).reshape(grad.shape[0], -1)
            row_grads[index] = row_grads[index] + per_row if index in row_grads else per_row

    hooks = _Hooks(blocks, on_backward)
    try:
        raw = as_matrix(task.loss_matrix(batch))
        losses = raw if weights is None else raw * weights.to(raw)[None, :]
        n, k = losses.shape
        finite = torch.isfinite(losses).all(dim=1)
        per_sample = torch.where(finite[:, None], losses, torch.zeros_like(losses)).mean(dim=1)
        grads = torch.autograd.grad(per_sample.sum(), list(blocks.params), allow_unused=True)
    finally:
        hooks.remove()
    _check_hooked(blocks, grads, {index for index, _ in partials})
    terms = torch.zeros(n, k, len(matrices[0]) if matrices else 1, dtype=torch.float64, device=losses.device)
    for index, partial in partials:
        _rows_per_term(partial.shape[0], n, k, blocks.names[index])
        terms += partial.reshape(n, k, -1).double()
    terms[~finite] = float("nan")
    sample_losses = raw.detach().double().mean(dim=1)
    sample_losses[~finite] = float("nan")
    term_norms = sample_norms = None
    if norms:
        term_sq = torch.zeros(n, k, dtype=torch.float64, device=losses.device)
        sample_sq = torch.zeros(n, dtype=torch.float64, device=losses.device)
        for index in list(row_grads):
            per_row = row_grads.pop(index).double().reshape(n, k, -1)
            term_sq += per_row.pow(2).sum(dim=2)
            sample_sq += per_row.sum(dim=1).pow(2).sum(dim=1)
        term_norms, sample_norms = term_sq.sqrt(), sample_sq.sqrt()
        term_norms[~finite], sample_norms[~finite] = float("nan"), float("nan")
        term_norms, sample_norms = term_norms.cpu(), sample_norms.cpu()
    return ContractedTerms(terms.cpu(), sample_losses.cpu(), term_norms, sample_norms)


def contracted_scores(
    task: ScoringTask, blocks: LoraBlocks, directions: Mapping[str, torch.Tensor], batch: Any,
    *, weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Z`` of each sample of ``batch`` along ``directions`` (``{name: h_l [d_l]}``): ``[B]`` float64.

    One forward and one backward, no per-sample gradients; NaN where the loss is not finite.
    """
    return contracted_terms(task, blocks, directions, batch, weights=weights)[:, :, 0].sum(dim=1)


def _explicit_dot(blocks: LoraBlocks, directions: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Dot products of the blocks' current ``.grad`` with each direction, ``[n_dir]`` float64."""
    grads = blocks.flat_grads()
    total = None
    for name in blocks.names:
        h = directions[name].double()
        h = h if h.ndim == 2 else h[None, :]
        part = h @ grads[name].double()
        total = part if total is None else total + part
    return total


def reference_term_scores(
    task: ScoringTask, blocks: LoraBlocks, directions: Mapping[str, torch.Tensor], batch: Any,
    *, weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`contracted_terms` by the plain loop: per sample and term, ``backward()``, read every
    block's ``.grad``, dot it with each direction in float64. ``[B, K, n_dir]``."""
    out = []
    for single in split_batch(batch):
        losses = _weighted_terms(task, single, weights)[0]
        k = losses.shape[0]
        if not torch.isfinite(losses).all():
            n_dir = next(iter(directions.values()))
            out.append(torch.full((k, n_dir.shape[0] if n_dir.ndim == 2 else 1), float("nan"), dtype=torch.float64))
            continue
        per_term = []
        for term in range(k):
            blocks.zero_grad()
            (losses[term] / k).backward(retain_graph=term < k - 1)
            per_term.append(_explicit_dot(blocks, directions))
        out.append(torch.stack(per_term))
    blocks.zero_grad()
    return torch.stack(out)


def reference_term_norms(
    task: ScoringTask, blocks: LoraBlocks, batch: Any, *, weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`ContractedTerms`' ``term_norms`` ``[B, K]`` and ``sample_norms`` ``[B]`` by the plain
    loop: per sample and term, ``backward()`` of ``weights[k] · ℓ_k / K``, the norm of every block's
    ``.grad`` together, and of their sum over the sample's terms."""
    term_norms, sample_norms = [], []
    for single in split_batch(batch):
        losses = _weighted_terms(task, single, weights)[0]
        k = losses.shape[0]
        if not torch.isfinite(losses).all():
            term_norms.append(torch.full((k,), float("nan"), dtype=torch.float64))
            sample_norms.append(torch.tensor(float("nan"), dtype=torch.float64))
            continue
        total, norms = None, []
        for term in range(k):
            blocks.zero_grad()
            (losses[term] / k).backward(retain_graph=term < k - 1)
            flat = torch.cat([g.double() for g in blocks.flat_grads().values()])
            norms.append(flat.norm())
            total = flat if total is None else total + flat
        term_norms.append(torch.stack(norms))
        sample_norms.append(total.norm())
    blocks.zero_grad()
    return torch.stack(term_norms), torch.stack(sample_norms)


def reference_scores(
    task: ScoringTask, blocks: LoraBlocks, directions: Mapping[str, torch.Tensor], batch: Any,
    *, weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Z`` of each sample of ``batch`` by the plain per-sample loop. ``[B]`` float64.

    For each sample alone: forward, ``loss.backward()``, read every block's ``.grad``, dot it with
    ``h_l`` in float64. No hooks, no batching tricks: the yardstick for the fast path.
    """
    scores = []
    for single in split_batch(batch):
        blocks.zero_grad()
        loss = _weighted_terms(task, single, weights).mean(dim=1)[0]
        if not torch.isfinite(loss):
            scores.append(float("nan"))
            continue
        loss.backward()
        scores.append(float(_explicit_dot(blocks, directions)[0]))
    blocks.zero_grad()
    return torch.tensor(scores, dtype=torch.float64)
