"""A DataInf-style scoring pipeline, the comparison point for ALBAT's fast path in bench_scoring."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from dreambat.albat import LoraBlocks
    from dreambat.albat import ScoringTask


def datainf_pipeline_scores(task: ScoringTask, blocks: LoraBlocks, subject_gradient: Mapping[str, torch.Tensor],
                            batches: list[dict], damping: float = 0.1):
    """DataInf's own recipe, for comparison with the fast path. Returns ``(scores [N], info)``.

    1. One ``loss.backward()`` per candidate; its flattened LoRA gradient is *kept*
       (``N x D`` float32: the pipeline's memory grows with the number of candidates).
    2. Per block, the closed form ``h = (1/(Nλ)) Σ_i (v − (vᵀg_i / (λ + ‖g_i‖²)) g_i)`` with the
       candidates' own gradients as the curvature set and ``v`` the subject's mean gradient.
    3. ``Z_i = ⟨g_i, h⟩`` summed over blocks.

    Args:
        task: the candidates' losses.
        blocks: the LoRA blocks differentiated.
        subject_gradient: ``{block name: v_l [d_l]}``, the subject's mean gradient.
        batches: the candidate batches.
    """
    import torch

    from dreambat.albat import DataInfInverse
    from dreambat.albat import as_matrix, split_batch

    kept: dict[str, list] = {name: [] for name in blocks.names}
    started = time.perf_counter()
    for batch in batches:
        for single in split_batch(batch):
            blocks.zero_grad()
            as_matrix(task.loss_matrix(single)).mean().backward()
            for name, grad in blocks.flat_grads().items():
                kept[name].append(grad.float().clone())
    blocks.zero_grad()
    rows = {name: torch.stack(grads) for name, grads in kept.items()}
    del kept
    gradients_seconds = time.perf_counter() - started
    started = time.perf_counter()
    strategy = DataInfInverse(damping)
    scores = torch.zeros(len(rows[blocks.names[0]]), dtype=torch.float64, device=rows[blocks.names[0]].device)
    for name in blocks.names:
        h = strategy.solve(rows[name], subject_gradient[name].double())
        scores += rows[name].double() @ h.double()
    closed_form_seconds = time.perf_counter() - started
    stored = sum(r.numel() * r.element_size() for r in rows.values())
    return scores.cpu(), {"gradients_seconds": gradients_seconds, "closed_form_seconds": closed_form_seconds,
                    "stored_gradient_mb": stored / 2**20}
