"""The parameters ALBAT differentiates: the LoRA factors of peft adapters, one block per matrix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ..errors import ConfigError

# The low-rank factors of a peft LoRA layer. DoRA magnitudes and embedding factors are not blocks.
LORA_FACTORS: tuple[str, ...] = ("lora_A", "lora_B")


def lora_factors(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, factor)`` for every ``lora_A`` / ``lora_B`` module of every adapter, in module order.

    Layers are found by peft's own type (:class:`peft.tuners.lora.LoraLayer`), never by parameter
    names. ``name`` is the factor's module path (e.g. ``...to_k.lora_A.default``); within one
    layer ``lora_A`` comes before ``lora_B``, as in ``named_parameters()``.
    """
    for layer_name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for factor in LORA_FACTORS:
            for adapter, module in getattr(layer, factor).items():
                yield f"{layer_name}.{factor}.{adapter}", module


@dataclass(frozen=True)
class LoraBlocks:
    """The trainable LoRA matrices of one or more models, in a fixed order.

    Block l is one ``lora_A`` or ``lora_B`` weight (as DataInf splits them); ``names[l]`` is its
    parameter name, prefixed with the model's index when several models are given.
    """

    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]
    modules: tuple[nn.Module, ...]

    @classmethod
    def from_models(cls, *models: nn.Module | None) -> LoraBlocks:
        """Collect the trainable LoRA factors of ``models`` (``None`` entries ignored).

        Raises:
            ConfigError: no trainable LoRA parameter was found.
        """
        present = [m for m in models if m is not None]
        names, params, modules = [], [], []
        for index, model in enumerate(present):
            prefix = f"{index}." if len(present) > 1 else ""
            for name, module in lora_factors(model):
                if module.weight.requires_grad:
                    names.append(f"{prefix}{name}.weight")
                    params.append(module.weight)
                    modules.append(module)
        if not params:
            raise ConfigError(
                "The model has no trainable LoRA parameters (no peft LoRA layer whose lora_A/lora_B "
                "weight has requires_grad=True). Add an adapter first (peft's get_peft_model or "
                "inject_adapter_in_model, or diffusers' add_adapter) and load the surrogate weights into it."
            )
        return cls(tuple(names), tuple(params), tuple(modules))

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(zip(self.names, self.params))

    @property
    def dims(self) -> tuple[int, ...]:
        """d_l, the number of entries of each block."""
        return tuple(p.numel() for p in self.params)

    @property
    def num_params(self) -> int:
        """D, the number of LoRA parameters scored over."""
        return sum(self.dims)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def flat_grads(self) -> dict[str, torch.Tensor]:
        """Current ``.grad`` of every block, flattened to ``[d_l]`` (zeros where no gradient flowed)."""
        return {
            name: (p.grad.detach().reshape(-1).clone() if p.grad is not None else torch.zeros(p.numel(), device=p.device))
            for name, p in self
        }
