"""Which LoRA factor layers the fast scoring path can contract, chosen by layer type.

The fast path needs, for a factor ``y = f(x; W)`` that is linear in its weight, the output the
layer would give with its weight replaced by a direction ``H`` and no bias: ``f(x; H)``. Then the
directional derivative of the loss is ``⟨H, ∇_W ℓ⟩ = Σ_positions ∂ℓ/∂y · f(x; H)``, summed over
every output position of each row, because ``f`` is linear in W. A bias, if the layer has one, is
not a block and does not enter.

* ``nn.Linear`` (peft's factors for Linear targets): ``f(x; H) = x Hᵀ``.
* ``nn.Conv2d`` (peft's factors for Conv2d targets, e.g. a UNet's ResNet convolutions):
  ``f(x; H) = conv2d(x, H)`` with the layer's stride, padding, dilation and groups.

Another type is supported by :func:`register_layer` with its own ``f``; an unsupported type is
refused with the reference path as the way out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

DirectionalOutput = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(layer, input x, direction H shaped like the weight) -> f(x; H)``, the output's shape."""


def _linear(layer: nn.Module, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return x @ direction.T


def _conv2d(layer: nn.Module, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        return F.conv2d(x, direction, None, layer.stride, 0, layer.dilation, layer.groups)
    return F.conv2d(x, direction, None, layer.stride, layer.padding, layer.dilation, layer.groups)


_REGISTRY: dict[type[nn.Module], DirectionalOutput] = {nn.Linear: _linear, nn.Conv2d: _conv2d}


def register_layer(layer_type: type[nn.Module], directional_output: DirectionalOutput) -> None:
    """Let the fast path score LoRA factors of ``layer_type`` (and its subclasses)."""
    _REGISTRY[layer_type] = directional_output


def directional_output_for(name: str, layer: nn.Module) -> DirectionalOutput:
    """The registered ``f(x; H)`` of ``layer``'s type (most specific first).

    Raises:
        ConfigError: no registered type matches; the message names the block.
    """
    for layer_type in type(layer).__mro__:
        if layer_type in _REGISTRY:
            return _REGISTRY[layer_type]
    supported = ", ".join(t.__name__ for t in _REGISTRY)
    raise ConfigError(
        f"LoRA block '{name}' is a {type(layer).__name__}; the fast scoring path handles {supported} "
        "factors. Use the reference path (--scoring_path reference) or register the layer type with "
        "dreambat.albat.layers.register_layer."
    )
