"""Which LoRA factor layers the fast scoring path can contract, chosen by layer type.

The fast path needs, for a factor ``y = f(x; W)`` that is linear in its weight, the output the
layer would give with its weight replaced by a direction ``H`` and no bias: ``f(x; H)``. Then the
directional derivative of the loss is ``⟨H, ∇_W ℓ⟩ = Σ_positions ∂ℓ/∂y · f(x; H)``, summed over
every output position of each row, because ``f`` is linear in W. A bias, if the layer has one, is
not a block and does not enter.

* ``nn.Linear`` (peft's factors for Linear targets): ``f(x; H) = x Hᵀ``.
* ``nn.Conv2d`` (peft's factors for Conv2d targets, e.g. a UNet's ResNet convolutions):
  ``f(x; H) = conv2d(x, H)`` with the layer's stride, padding, dilation and groups.

The explicit per-row weight gradients of the reference set come from the same hooks: a row's
gradient is the contraction of its output gradient with its input, ``Σ_t g_t x_tᵀ`` for a Linear
factor, the same over unfolded patches for a Conv2d one (``PerRowGradient``).

Another type is supported by :func:`register_layer` with its own functions; an unsupported type
is refused with the reference path as the way out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

DirectionalOutput = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(layer, input x, direction H shaped like the weight) -> f(x; H)``, the output's shape."""

PerRowGradient = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(layer, input x [R, ...], output gradient g [R, ...]) -> [R, *weight.shape]``: each row's
gradient of the loss with respect to the layer's weight."""


def _linear(layer: nn.Module, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return x @ direction.T


def _conv2d(layer: nn.Module, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        return F.conv2d(x, direction, None, layer.stride, 0, layer.dilation, layer.groups)
    return F.conv2d(x, direction, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _linear_rows(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    rows = x.shape[0]
    return torch.einsum("rto,rti->roi", grad.reshape(rows, -1, grad.shape[-1]), x.reshape(rows, -1, x.shape[-1]))


def _conv2d_rows(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    if layer.groups != 1:
        raise ConfigError("Per-row gradients of grouped Conv2d LoRA factors are not supported.")
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    else:
        padding = layer.padding
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
    rows, out_channels = grad.shape[:2]
    per_row = torch.einsum("rol,ril->roi", grad.reshape(rows, out_channels, -1), patches)
    return per_row.reshape(rows, *layer.weight.shape)


_REGISTRY: dict[type[nn.Module], tuple[DirectionalOutput, PerRowGradient]] = {
    nn.Linear: (_linear, _linear_rows),
    nn.Conv2d: (_conv2d, _conv2d_rows),
}


def register_layer(
    layer_type: type[nn.Module], directional_output: DirectionalOutput, per_row_gradient: PerRowGradient
) -> None:
    """Let the fast path (and the reference rows) handle LoRA factors of ``layer_type`` and its subclasses."""
    _REGISTRY[layer_type] = (directional_output, per_row_gradient)


def _lookup(name: str, layer: nn.Module) -> tuple[DirectionalOutput, PerRowGradient]:
    for layer_type in type(layer).__mro__:
        if layer_type in _REGISTRY:
            return _REGISTRY[layer_type]
    supported = ", ".join(t.__name__ for t in _REGISTRY)
    raise ConfigError(
        f"LoRA block '{name}' is a {type(layer).__name__}; the fast scoring path handles {supported} "
        "factors. Use the reference path (--scoring_path reference) or register the layer type with "
        "dreambat.albat.layers.register_layer."
    )


def directional_output_for(name: str, layer: nn.Module) -> DirectionalOutput:
    """The registered ``f(x; H)`` of ``layer``'s type (most specific first).

    Raises:
        ConfigError: no registered type matches; the message names the block.
    """
    return _lookup(name, layer)[0]


def per_row_gradient_for(name: str, layer: nn.Module) -> PerRowGradient:
    """The registered per-row weight gradient of ``layer``'s type (same lookup and errors)."""
    return _lookup(name, layer)[1]
