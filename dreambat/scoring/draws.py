"""The Monte Carlo draws behind a per-sample diffusion loss: which timesteps, which noise.

A sample's loss ``ℓ(x)`` is an expectation over timesteps t and noise ε, estimated by a fixed set
of *terms*. :class:`DrawDesign` lays them out: ``num_timesteps`` strata of ``[0, T)``, in each
``draws_per_timestep`` draws, and with ``antithetic`` each draw is a pair ``(ε, −ε)`` at one t.
Every term's t and ε is a pure function of (the sample's key, stratum, draw, ``seed``); with
``common_noise`` the key drops out and every sample (candidates and reference photos alike) gets
the same noise in the same slot (common random numbers). Nothing depends on the batch a sample
lands in, its position, the process or the machine.

Terms are ordered stratum-major (``k``, then draw ``m``, then the antithetic sign), and
:meth:`DrawDesign.halves` splits them into two disjoint halves that each cover every stratum
when there are several draws per stratum (else alternate strata), keeping antithetic pairs
together: the split-half reliability of :mod:`dreambat.albat.reliability` needs halves that are
independent estimates of the same loss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError

TimestepRule = Literal["centres", "stratified"]
TIMESTEP_RULES: tuple[str, ...] = ("centres", "stratified")


def noise_seed(key: str, k: int, draw: int = 0, seed: int = 0) -> int:
    """A 63-bit seed from a sample key, stratum ``k``, draw index and run seed.

    The first draw of seed 0 hashes ``f"{key}\\x1f{k}"`` exactly as earlier dreambat versions did,
    so held-out losses computed with one draw per timestep stay comparable across versions.
    """
    name = f"{key}\x1f{k}" + (f"\x1f{draw}" if draw else "") + (f"\x1fseed{seed}" if seed else "")
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


COMMON_KEY = "\x00common"
"""The key every sample shares under common random numbers."""


@dataclass(frozen=True)
class DrawDesign:
    """The terms of each sample's loss (see the module docstring).

    Attributes:
        num_timesteps: K, strata of ``[0, T)``.
        draws_per_timestep: noise draws per stratum.
        antithetic: each draw is the pair ``(ε, −ε)`` at the same timestep.
        common_noise: the same noise for every sample in a given slot (common random numbers).
        timesteps: ``"centres"``: every draw of stratum k uses its centre ``⌊(k + ½)T/K⌋``;
            ``"stratified"``: each draw takes a uniform t inside its stratum, seeded like its noise.
        seed: selects the draws; two seeds are two independent estimates.
    """

    num_timesteps: int
    draws_per_timestep: int = 1
    antithetic: bool = False
    common_noise: bool = False
    timesteps: TimestepRule = "centres"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_timesteps < 1:
            raise ConfigError(
                f"The number of scoring timesteps K must be >= 1, got {self.num_timesteps} (--num_score_timesteps)."
            )
        if self.draws_per_timestep < 1:
            raise ConfigError(f"draws_per_timestep must be >= 1, got {self.draws_per_timestep}.")
        if self.timesteps not in TIMESTEP_RULES:
            raise ConfigError(f"timesteps must be 'centres' or 'stratified', got {self.timesteps!r}.")

    @property
    def num_terms(self) -> int:
        """Loss terms (UNet rows) per sample: ``K · draws · (2 if antithetic)``."""
        return self.num_timesteps * self.draws_per_timestep * (2 if self.antithetic else 1)

    def slots(self) -> list[tuple[int, int, int]]:
        """``(stratum k, draw m, sign ±1)`` of every term, in term order."""
        signs = (1, -1) if self.antithetic else (1,)
        return [(k, m, s) for k in range(self.num_timesteps) for m in range(self.draws_per_timestep) for s in signs]

    def term_groups(self) -> list[int]:
        """The stratum of each term (terms of one stratum share a timestep distribution)."""
        return [k for k, _, _ in self.slots()]

    def halves(self) -> tuple[list[int], list[int]]:
        """Two disjoint halves of the term indices, each covering every stratum when it can."""
        first, second = [], []
        for index, (k, m, _) in enumerate(self.slots()):
            parity = m % 2 if self.draws_per_timestep > 1 else k % 2
            (first if parity == 0 else second).append(index)
        return first, second

    def timesteps_for(self, num_train_timesteps: int) -> torch.Tensor:
        """The timestep of every term ``[num_terms]`` (long); the same for every sample."""
        K = self.num_timesteps
        if K > num_train_timesteps:
            raise ConfigError(f"K = {K} exceeds the scheduler's {num_train_timesteps} timesteps.")
        values = []
        for k, m, _ in self.slots():
            if self.timesteps == "centres":
                offset = 0.5
            else:
                generator = torch.Generator().manual_seed(noise_seed("\x00timestep", k, m, self.seed))
                offset = float(torch.rand((), generator=generator, dtype=torch.float64))
            values.append(min(int((k + offset) * num_train_timesteps / K), num_train_timesteps - 1))
        return torch.tensor(values, dtype=torch.long)

    def noise(self, keys: Sequence[str], shape: Sequence[int]) -> torch.Tensor:
        """Standard normal noise ``[B, num_terms, *shape]``; entry (i, j) depends on ``keys[i]``
        (unless ``common_noise``), term j's slot and the seed only."""
        slots = self.slots()
        cache: dict[tuple[str, int, int], torch.Tensor] = {}
        generator = torch.Generator()
        out = torch.empty(len(keys), len(slots), *shape)
        for i, key in enumerate(keys):
            key = COMMON_KEY if self.common_noise else key
            for j, (k, m, sign) in enumerate(slots):
                base = cache.get((key, k, m))
                if base is None:
                    generator.manual_seed(noise_seed(key, k, m, self.seed))
                    base = cache[(key, k, m)] = torch.randn(*shape, generator=generator)
                out[i, j] = base if sign > 0 else -base
        return out
