"""Inverse curvature: the preconditioned direction ``h_l = G_l⁻¹ v_l`` of each LoRA block.

Pure tensor code; it knows nothing about models. Block l contributes the reference gradient rows
``U_l`` of shape ``[n, d_l]`` (row r = ∇_{θ_l} of reference term r, flattened), from which

* ``v_l = U_l.mean(0)``                        the adaptation-loss gradient, ``[d_l]``
* ``λ_l = c · mean_r ‖g_r‖² / d_l``            the damping (``c`` = ``damping``, default 0.1)
* ``G_l = U_lᵀU_l / n + λ_l I``                the damped empirical Fisher, ``d_l × d_l``

``G_l`` is never formed. Strategies are small classes behind :class:`InverseStrategy`, chosen by
name through :func:`get_strategy`:

* ``exact``: the damped inverse itself, solved on the smaller side: Woodbury on the ``n × n``
  system when n < d (O(n²d + n³)), the ``d × d`` system itself when d ≤ n (O(nd² + d³)), so
  thousands of reference rows cost no more than the block's own size.
* ``datainf``: DataInf's swap of inverse and average; O(nd) time and memory.
* ``identity``: ``h = v`` (plain gradient similarity); O(nd).

All arithmetic is float64; directions come back in the rows' dtype and device. A block whose rows
are all zero (e.g. ``lora_A`` while ``lora_B`` is still zero) has λ = 0 and gets ``h_l = 0``: it
cannot change any score, and dividing by λ would only produce NaN.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .errors import SettingError

DEFAULT_DAMPING = 0.1
# Curvature "auto": the exact inverse while its solve, min(reference rows, largest block), is at
# most this size; DataInf above.
AUTO_EXACT_MAX_REF = 2048


def check_damping(damping: Any) -> float:
    """``damping`` as a float; :class:`SettingError` unless it is a finite number > 0."""
    numeric = isinstance(damping, (int, float)) and not isinstance(damping, bool)
    if not numeric or not math.isfinite(damping) or damping <= 0:
        raise SettingError("curvature", "damping", damping, "invalid",
                           f"a finite number > 0 (λ_l = damping · mean‖g‖² / d_l; default {DEFAULT_DAMPING})")
    return float(damping)


def damping_lambda(rows: Tensor, damping: float) -> float:
    """``λ = damping · mean_r ‖g_r‖² / d`` for rows ``[n, d]`` (computed in float64).

    Scaling with the mean squared gradient norm per coordinate makes ``damping`` unit-free: the
    same ``c`` means the same relative regularisation for every block, whatever its scale.
    """
    n, d = rows.shape
    return damping * rows.double().pow(2).sum().item() / (n * d)


class InverseStrategy(ABC):
    """Computes ``h = G⁻¹ v`` from the reference rows of one block.

    Subclasses implement :meth:`_solve`; :meth:`direction` checks the rows, moves to float64,
    computes ``v`` and ``λ``, and handles the all-zero block.
    """

    name: ClassVar[str]

    def __init__(self, damping: float = DEFAULT_DAMPING):
        self.damping = check_damping(damping)

    def direction(self, rows: Tensor) -> Tensor:
        """``h = G⁻¹ v`` for one block, with ``v`` the mean of ``rows``.

        Args:
            rows: ``[n_ref, d]`` reference gradient rows ``U``.

        Returns:
            ``[d]`` in ``rows.dtype`` on ``rows.device``; zeros if every row is zero.

        Raises:
            DataError: ``rows`` is not 2-D, has no row, or holds NaN/inf.
        """
        return self.solve(rows, rows.double().mean(dim=0))

    def solve(self, rows: Tensor, v: Tensor) -> Tensor:
        """``(UᵀU/n + λI)⁻¹ v`` (or this strategy's stand-in) for any ``v`` of length ``d``.

        The curvature comes from ``rows`` (λ too); ``v`` may come from other data, as in
        DataInf's own pipeline, where the rows are the training samples' gradients and ``v``
        the test gradient. Same checks and return as :meth:`direction`.
        """
        _check_shape(rows)
        if v.shape != rows.shape[1:]:
            raise DataError(f"solve: v has shape {tuple(v.shape)}, the rows need ({rows.shape[1]},).")
        u = rows.double()
        lam = damping_lambda(u, self.damping)
        if not math.isfinite(lam):
            raise DataError(
                "The reference gradient rows hold non-finite values (NaN or inf). The surrogate LoRA or "
                "the subject loss is broken: check the surrogate weights, lower the resolution or use "
                "float32 for scoring."
            )
        if lam == 0.0:
            return torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
        return self._solve(u, v.to(u), lam).to(rows.dtype)

    @abstractmethod
    def _solve(self, u: Tensor, v: Tensor, lam: float) -> Tensor:
        """``(UᵀU/n + λI)⁻¹ v`` or this strategy's stand-in; ``u [n, d]``, ``v [d]`` float64, λ > 0."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(damping={self.damping})"


class ExactInverse(InverseStrategy):
    """The exact damped inverse ``h = (UᵀU/n + λI)⁻¹ v``, never forming more than ``min(n, d)²``.

    With fewer rows than parameters (n < d), Woodbury: ``h = (1/λ)(v − Uᵀ (nλI + UUᵀ)⁻¹ U v)``,
    the ``n × n`` Gram matrix (O(n²d)) and one Cholesky solve (O(n³)). With at least as many rows
    as parameters (d ≤ n), the ``d × d`` system itself (O(nd² + d³)). Both are the same matrix
    identity; the switch only keeps the solve on the smaller side.
    """

    name = "exact"

    def _solve(self, u: Tensor, v: Tensor, lam: float) -> Tensor:
        n, d = u.shape
        if d <= n:
            system = u.T @ u / n + lam * torch.eye(d, dtype=u.dtype, device=u.device)
            return _spd_solve(system, v[:, None]).squeeze(1)
        system = u @ u.T + (n * lam) * torch.eye(n, dtype=u.dtype, device=u.device)
        coeffs = _spd_solve(system, (u @ v)[:, None])
        return (v - u.T @ coeffs.squeeze(1)) / lam


def _spd_solve(system: Tensor, rhs: Tensor) -> Tensor:
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.solve(system, rhs)  # SPD in exact arithmetic; LU if rounding says otherwise


class DataInfInverse(InverseStrategy):
    """DataInf's closed form: ``h = (1/(nλ)) Σ_r (v − (vᵀg_r / (λ + ‖g_r‖²)) g_r)``. O(nd).

    It differs from :class:`ExactInverse` because it swaps the inverse and the average,
    ``(mean_r (g_r g_rᵀ + λI))⁻¹ ≈ mean_r (g_r g_rᵀ + λI)⁻¹``, then inverts each rank-one term
    with Sherman–Morrison. The swap is exact for n = 1 and good when λ dominates ‖g_r‖²; when
    rows have norms far above λ (d ≫ n) each term nearly projects out its own g_r, which the
    exact inverse does not do, so the two directions can rank candidates differently.
    """

    name = "datainf"

    def _solve(self, u: Tensor, v: Tensor, lam: float) -> Tensor:
        n = u.shape[0]
        coeffs = (u @ v) / (lam + u.pow(2).sum(dim=1))
        return (v - (u.T @ coeffs) / n) / lam


class IdentityInverse(InverseStrategy):
    """``h = v``: no curvature, plain gradient similarity (TracIn/DataInf's "identity" baseline)."""

    name = "identity"

    def _solve(self, u: Tensor, v: Tensor, lam: float) -> Tensor:
        return v


STRATEGIES: dict[str, type[InverseStrategy]] = {
    cls.name: cls for cls in (ExactInverse, DataInfInverse, IdentityInverse)
}


def get_strategy(
    name: str, damping: float = DEFAULT_DAMPING, *, n_ref: int | None = None, max_dim: int | None = None
) -> InverseStrategy:
    """The strategy called ``name``.

    ``"auto"`` is ``exact`` when its solve is small, ``min(n_ref, max_dim) ≤ AUTO_EXACT_MAX_REF``
    (``max_dim``: the largest block; the exact solve is ``min(n, d)``-sized), else ``datainf``.

    Raises:
        ConfigError: unknown name, ``"auto"`` without ``n_ref``, or a bad ``damping``.
    """
    if name == "auto":
        if n_ref is None:
            raise ConfigError(
                "curvature 'auto' needs n_ref (the number of reference rows) to choose a strategy."
            )
        size = n_ref if max_dim is None else min(n_ref, max_dim)
        name = ExactInverse.name if size <= AUTO_EXACT_MAX_REF else DataInfInverse.name
    if name not in STRATEGIES:
        raise SettingError("curvature strategy", "name", name, "unknown", ", ".join(("auto", *STRATEGIES)))
    return STRATEGIES[name](damping)


def precondition(blocks: Mapping[str, Tensor], strategy: InverseStrategy) -> dict[str, Tensor]:
    """``{name: h_l [d_l]}`` from ``{name: U_l [n_ref, d_l]}``, same keys in the same order.

    Raises:
        ConfigError: ``blocks`` is empty.
        DataError: a block has no row or non-finite values (the message names the block).
    """
    _require_blocks(blocks)
    directions = {}
    for name, rows in blocks.items():
        try:
            directions[name] = strategy.direction(rows)
        except DataError as error:
            raise DataError(f"LoRA block '{name}': {error}") from error
    return directions


def describe(
    blocks: Mapping[str, Tensor], strategy: InverseStrategy, directions: Mapping[str, Tensor] | None = None
) -> dict[str, Any]:
    """JSON-ready summary of the curvature: strategy, damping, per-block d, λ and ‖h‖.

    Pass ``directions`` (from :func:`precondition`) to avoid solving again.
    """
    _require_blocks(blocks)
    if directions is None:
        directions = precondition(blocks, strategy)
    per_block = {
        name: {
            "dim": int(rows.shape[1]),
            "lambda": damping_lambda(rows, strategy.damping),
            "h_norm": float(directions[name].double().norm()),
        }
        for name, rows in blocks.items()
    }
    lambdas = [entry["lambda"] for entry in per_block.values()]
    return {
        "strategy": strategy.name,
        "damping": strategy.damping,
        "num_blocks": len(per_block),
        "zero_blocks": sum(lam == 0.0 for lam in lambdas),
        "lambda_min": min(lambdas),
        "lambda_max": max(lambdas),
        "h_norm_total": math.sqrt(sum(entry["h_norm"] ** 2 for entry in per_block.values())),
        "blocks": per_block,
    }


def _require_blocks(blocks: Mapping[str, Tensor]) -> None:
    if not blocks:
        raise ConfigError(
            "No trainable LoRA parameters to precondition (the block mapping is empty). Load a "
            "surrogate LoRA into the model before scoring."
        )


def _check_shape(rows: Tensor) -> None:
    if rows.ndim != 2:
        raise DataError(
            f"Reference gradient rows must be a [n_ref, d] matrix, got shape {tuple(rows.shape)}."
        )
    if rows.shape[0] == 0:
        raise DataError(
            "No reference gradients: the reference set has no row (no timestep per sample, or no "
            "reference sample)."
        )
