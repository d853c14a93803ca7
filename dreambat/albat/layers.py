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

Another type is supported by :func:`register_layer` with its own functions. A factor of any other
type is refused with :class:`UnsupportedAdapterError`, never left out of the scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class UnsupportedAdapterError(ConfigError):
    """A LoRA adapter the scoring core cannot score. It is refused rather than left out of the scores.

    Attributes:
        module: module path of the adapter's factor (e.g. ``"...emb.lora_embedding_A.default"``).
        layer_type: class name of what the core met there: the factor layer's type, or the adapted
            layer's type when peft keeps its factors as bare parameters.
        reason: why it cannot be scored.
        remedy: what to do instead.

    The message says all four in the library's terms; a command line may word its own advice
    from the attributes.
    """

    def __init__(self, module: str, layer_type: str, reason: str, remedy: str):
        self.module = module
        self.layer_type = layer_type
        self.reason = reason
        self.remedy = remedy
        super().__init__(
            f"Cannot score the LoRA adapter '{module}' ({layer_type}): {reason}. To go on, {remedy}."
        )

    def __reduce__(self):
        return type(self), (self.module, self.layer_type, self.reason, self.remedy)


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


def supports(layer: nn.Module) -> bool:
    """Whether ``layer``'s type (or a base class of it) is registered."""
    return any(layer_type in _REGISTRY for layer_type in type(layer).__mro__)


def unsupported_factor(name: str, layer: nn.Module) -> UnsupportedAdapterError:
    """The error for a LoRA factor ``name`` whose layer type is not registered."""
    supported = ", ".join(t.__name__ for t in _REGISTRY)
    return UnsupportedAdapterError(
        name, type(layer).__name__,
        f"no scoring functions are registered for {type(layer).__name__} factors (registered: {supported})",
        "if the factor is linear in its weight, register its type with dreambat.albat.register_layer "
        "before collecting the LoRA blocks; otherwise leave this layer out of the adapter's target_modules",
    )


def _lookup(name: str, layer: nn.Module) -> tuple[DirectionalOutput, PerRowGradient]:
    for layer_type in type(layer).__mro__:
        if layer_type in _REGISTRY:
            return _REGISTRY[layer_type]
    raise unsupported_factor(name, layer)


def directional_output_for(name: str, layer: nn.Module) -> DirectionalOutput:
    """The registered ``f(x; H)`` of ``layer``'s type (most specific first).

    Raises:
        UnsupportedAdapterError: no registered type matches; it names the block and its type.
    """
    return _lookup(name, layer)[0]


def per_row_gradient_for(name: str, layer: nn.Module) -> PerRowGradient:
    """The registered per-row weight gradient of ``layer``'s type (same lookup and errors)."""
    return _lookup(name, layer)[1]
