"""The parameters ALBAT differentiates: the LoRA factors of peft adapters, one block per matrix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ..errors import ConfigError
from .layers import UnsupportedAdapterError, supports, unsupported_factor


def _refusal(name: str, layer: LoraLayer, adapter: str, entry: object) -> UnsupportedAdapterError:
    """Why the adapter entry ``name`` of ``layer`` cannot be a block."""
    if getattr(layer, "use_dora", {}).get(adapter):
        return UnsupportedAdapterError(
            name, type(layer).__name__,
            "DoRA adds a magnitude vector that is not a low-rank factor, and the core scores plain LoRA only",
            "create the adapter with use_dora=False",
        )
    if not isinstance(entry, nn.Module):
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
        return UnsupportedAdapterError(
            name, type(base).__name__,
            "peft keeps the LoRA factors of this layer as bare parameters, not as layers, so the core has "
            "no factor input and output gradient to contract",
            "leave this layer out of the adapter's target_modules",
        )
    return unsupported_factor(name, entry)


def lora_factors(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, factor)`` for every low-rank factor of every adapter, in module order.

    Layers are found by peft's own type (:class:`peft.tuners.lora.LoraLayer`), and their adapter
    weights by peft's own declaration, the layer's ``adapter_layer_names`` (``lora_A`` and
    ``lora_B`` for Linear and Conv2d targets), never by parameter names. ``name`` is the factor's
    module path (e.g. ``...to_k.lora_A.default``); within one layer the declaration's order holds,
    so ``lora_A`` comes before ``lora_B`` as in ``named_parameters()``.

    Raises:
        UnsupportedAdapterError: an adapter entry is not a layer of a registered type
            (:mod:`.layers`): the factors of an ``nn.Embedding`` LoRA (bare parameters), a DoRA
            magnitude vector, or a factor of an unregistered type such as ``nn.Conv1d``. Frozen
            adapters are refused too: nothing peft declares is passed over.
    """
    for layer_name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for declared in layer.adapter_layer_names:
            for adapter, entry in (getattr(layer, declared, None) or {}).items():
                name = f"{layer_name}.{declared}.{adapter}"
                if not (isinstance(entry, nn.Module) and supports(entry)):
                    raise _refusal(name, layer, adapter, entry)
                yield name, entry


@dataclass(frozen=True)
class LoraBlocks:
    """The trainable LoRA matrices of one or more models, in a fixed order.

    Block l is the weight of one factor found by :func:`lora_factors` (one ``lora_A`` or ``lora_B``
    matrix, as DataInf splits them); ``names[l]`` is its parameter name, prefixed with the model's
    index when several models are given.
    """

    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]
    modules: tuple[nn.Module, ...]

    @classmethod
    def from_models(cls, *models: nn.Module | None) -> LoraBlocks:
        """Collect the trainable LoRA factors of ``models`` (``None`` entries ignored).

        Raises:
            UnsupportedAdapterError: an adapter cannot be scored (see :func:`lora_factors`).
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
                "The model has no trainable LoRA parameters (no peft LoRA layer with a factor whose "
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
