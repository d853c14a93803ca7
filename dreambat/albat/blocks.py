"""The parameters ALBAT differentiates: trainable LoRA matrices, one block per matrix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

LORA_MARKERS = ("lora_A", "lora_B")


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
        """Collect trainable LoRA weights of ``models`` (``None`` entries ignored).

        Raises:
            ConfigError: no trainable LoRA parameter was found.
        """
        present = [m for m in models if m is not None]
        names, params, modules = [], [], []
        for index, model in enumerate(present):
            prefix = f"{index}." if len(present) > 1 else ""
            for module_name, module in model.named_modules():
                weight = getattr(module, "weight", None)
                if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
                    continue
                if not any(marker in module_name.split(".") for marker in LORA_MARKERS):
                    continue
                names.append(f"{prefix}{module_name}.weight")
                params.append(weight)
                modules.append(module)
        if not params:
            raise ConfigError(
                "The model has no trainable LoRA parameters (no 'lora_A'/'lora_B' weight with "
                "requires_grad=True). Add an adapter first (dreambat.lora.add_unet_lora, or peft) "
                "and load the surrogate LoRA weights into it."
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
