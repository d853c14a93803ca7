"""The training stream: batches that are a pure function of (seed, process, micro-step).

A DataLoader's batches depend on everything drawn before them, so resuming at step ``i`` means
replaying ``i`` batches. :class:`TrainingStream` instead computes the batch of micro-step ``i``
directly, which makes restarts exact and free.

**Positions.** Slot ``j`` of micro-step ``i`` on process ``p`` (of ``P``, batch size ``B``) has the
global position ``pos = (i·P + p)·B + j``: the processes read disjoint, interleaved parts of one
global stream, as a sharded DataLoader does.

**Sources.** Each source (subject images, backbone images, class images) is read in
epoch-shuffled order along the positions: position ``pos`` of a source with ``n`` items is item
``perm_e[pos mod n]`` with ``e = pos // n`` and ``perm_e`` a permutation seeded by (seed, source,
e). With backbone share γ = 0 every slot is a subject slot, so the subject images come exactly as
from a shuffled DataLoader that never drops a partial batch (an epoch may end mid-batch). With
γ > 0 each slot is a backbone slot with probability γ, decided by a coin seeded per micro-step
batch; the slot then takes the backbone item at its position, otherwise the subject item at its
position. Both sources are therefore thinned epoch-shuffled streams: every item has the same
marginal probability, and no item repeats within a window of ``n`` positions.

**Prior preservation.** With class images, a batch holds ``B`` instance/mixture slots followed
by ``B`` class slots (diffusers' concatenated layout); class slots follow their own
epoch-shuffled order.

**Augmentation.** Every item is fetched with a generator seeded by (seed, source, position), and
inside :func:`torch.random.fork_rng`, so random crops and flips are reproducible and never touch
the global RNG that the training noise and timesteps come from. Datasets that take an explicit
generator expose ``getitem(index, generator)`` (as :class:`~dreambat.data.subject.SubjectDataset`
does); others may draw from torch's global RNG, which is seeded per slot here.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError

__all__ = ["BACKBONE", "CLASS", "SUBJECT", "Slot", "TrainingStream", "check_gamma", "mix_seed"]

SUBJECT, BACKBONE, CLASS = "subject", "backbone", "class"
_TAGS = {SUBJECT: 1, BACKBONE: 2, CLASS: 3, "coin": 4}
_PERMUTATION_CACHE_SIZE = 8


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same on every machine and Python version."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def check_gamma(gamma: float, backbone: Dataset | None) -> None:
    """Refuse a backbone share outside [0, 1) or one with no backbone samples to draw."""
    if not 0.0 <= gamma < 1.0:
        raise ConfigError(f"The backbone share gamma must be in [0, 1), got {gamma}.")
    if gamma > 0 and (backbone is None or len(backbone) == 0):
        raise ConfigError(
            f"gamma={gamma} asks for backbone samples but no (or an empty) backbone dataset "
            "was given; select backbone samples first or set gamma to 0."
        )

@dataclass(frozen=True)
class Slot:
    """One sample of a batch: which source, which item of it, and the seed of its augmentation."""

    source: str
    index: int
    seed: int


class TrainingStream:
    """Deterministic batches of subject images, optionally mixed with backbone and class images.

    Args:
        subject: map-style dataset of subject images; items ``{"pixel_values": [3,H,W],
            "prompt": str, "key": str}`` (the instance prompt).
        batch_size: instance/mixture slots per batch (``B``).
        seed: seed of the order, the coins and the augmentations.
        process_index, num_processes: this process and how many share the global stream.
        backbone: map-style dataset of selected backbone images (same item layout, own captions).
        gamma: expected share of backbone slots, in ``[0, 1)``; needs ``backbone`` when > 0.
        class_images: map-style dataset of class images; adds ``B`` class slots per batch.

    Batches are ``{"pixel_values": [B or 2B, 3, H, W], "prompts": list[str], "sources":
    list[str], "keys": list[str]}``; ``sources`` holds ``"subject"``, ``"backbone"`` or
    ``"class"`` per row. ``drawn`` counts the sources of the batches this stream has handed out.
    """

    def __init__(
        self,
        subject: Dataset,
        *,
        batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        backbone: Dataset | None = None,
        gamma: float = 0.0,
        class_images: Dataset | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if not 0 <= process_index < num_processes:
            raise ConfigError(f"process_index {process_index} is not in [0, {num_processes}).")
        check_gamma(gamma, backbone)
        for name, dataset in (("subject", subject), ("class image", class_images)):
            if dataset is not None and len(dataset) == 0:
                raise DataError(f"The {name} dataset is empty; there is nothing to train on.")
        self.subject = subject
        self.backbone = backbone if gamma > 0 else None
        self.class_images = class_images
        self.batch_size = batch_size
        self.seed = 0 if seed is None else int(seed)
        self.process_index = process_index
        self.num_processes = num_processes
        self.gamma = float(gamma)
        self.drawn: Counter[str] = Counter()
        self._permutations: dict[tuple[str, int], torch.Tensor] = {}

    def _datasets(self) -> dict[str, Dataset | None]:
        return {SUBJECT: self.subject, BACKBONE: self.backbone, CLASS: self.class_images}

    def _item_at(self, source: str, position: int) -> int:
        """Index of the item a source shows at ``position`` of its epoch-shuffled order."""
        size = len(self._datasets()[source])
        epoch, offset = divmod(position, size)
        key = (source, epoch)
        permutation = self._permutations.get(key)
        if permutation is None:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, _TAGS[source], epoch))
            permutation = torch.randperm(size, generator=generator)
            if len(self._permutations) >= _PERMUTATION_CACHE_SIZE:
                self._permutations.pop(next(iter(self._permutations)))
            self._permutations[key] = permutation
        return int(permutation[offset])

    def _global_batch(self, step: int, process_index: int | None = None) -> int:
        process = self.process_index if process_index is None else process_index
        return step * self.num_processes + process

    def _coins(self, global_batch: int) -> list[bool]:
        """Per slot: True for a backbone slot (probability gamma)."""
        if self.backbone is None:
            return [False] * self.batch_size
        generator = torch.Generator().manual_seed(mix_seed(self.seed, _TAGS["coin"], global_batch))
        return (torch.rand(self.batch_size, generator=generator) < self.gamma).tolist()

    def plan(self, step: int) -> list[Slot]:
        """The slots of micro-step ``step`` on this process, without loading any image."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        global_batch = self._global_batch(step)
        first = global_batch * self.batch_size
        slots = []
        for j, backbone in enumerate(self._coins(global_batch)):
            source = BACKBONE if backbone else SUBJECT
            slots.append(self._slot(source, first + j))
        if self.class_images is not None:
            slots += [self._slot(CLASS, first + j) for j in range(self.batch_size)]
        return slots

    def _slot(self, source: str, position: int) -> Slot:
        return Slot(source, self._item_at(source, position), mix_seed(self.seed, _TAGS[source], position))

    def batch(self, step: int) -> dict[str, Any]:
        """The batch of micro-step ``step`` on this process (see the class docstring)."""
        datasets = self._datasets()
        slots = self.plan(step)
        items = [_fetch(datasets[slot.source], slot.index, slot.seed) for slot in slots]
        return _collate(items, [slot.source for slot in slots])

    def count_sources(self, stop: int, start: int = 0, *, all_processes: bool = False) -> Counter[str]:
        """How many rows of each source micro-steps ``[start, stop)`` hold, from the plan alone.

        With ``all_processes`` the counts of every process are summed (no communication needed:
        every process's plan is known everywhere).
        """
        processes = range(self.num_processes) if all_processes else (self.process_index,)
        counts: Counter[str] = Counter()
        for step in range(start, stop):
            for process in processes:
                coins = self._coins(self._global_batch(step, process))
                counts[BACKBONE] += sum(coins)
                counts[SUBJECT] += len(coins) - sum(coins)
                if self.class_images is not None:
                    counts[CLASS] += self.batch_size
        return counts

    def iterate(self, start: int = 0, stop: int | None = None, *, num_workers: int = 0) -> Iterator[dict]:
        """Batches of micro-steps ``start, start+1, ...`` (up to ``stop``, or without end).

        With ``num_workers > 0`` the batches are built in DataLoader worker processes; they are
        the same batches, since each depends on its step alone.
        """
        if num_workers > 0:
            stop = stop if stop is not None else start + 2**62
            loader = DataLoader(
                _StepRange(self, start, stop),
                batch_size=None,
                num_workers=num_workers,
                # An explicit generator keeps the DataLoader from drawing on the global RNG.
                generator=torch.Generator().manual_seed(self.seed),
            )
            batches: Iterator[dict] = iter(loader)
        else:
            batches = (self.batch(step) for step in _count(start, stop))
        for batch in batches:
            self.drawn.update(batch["sources"])
            yield batch


def _count(start: int, stop: int | None) -> Iterator[int]:
    step = start
    while stop is None or step < stop:
        yield step
        step += 1


class _StepRange(Dataset):
    """Micro-steps ``[start, stop)`` of a stream as a map-style dataset of whole batches."""

    def __init__(self, stream: TrainingStream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.stream.batch(self.start + index)


def _fetch(dataset: Dataset, index: int, seed: int) -> dict[str, Any]:
    """Item ``index`` with its randomness seeded by ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        getitem = getattr(dataset, "getitem", None)
        if getitem is not None:
            return getitem(index, torch.Generator().manual_seed(seed))
        return dataset[index]


def _collate(items: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    shapes = {tuple(item["pixel_values"].shape) for item in items}
    if len(shapes) > 1:
        found = ", ".join(
            f"{source} {tuple(item['pixel_values'].shape)}" for item, source in zip(items, sources)
        )
        raise DataError(
            f"Images of one training batch differ in size ({found}); build every dataset "
            "(subject, backbone, class) at the training resolution."
        )
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "prompts": [item["prompt"] for item in items],
        "sources": list(sources),
        "keys": [str(item.get("key", "")) for item in items],
    }
    if all("original_size" in item for item in items):  # SDXL's size conditioning, where every item knows it
        batch["original_sizes"] = [tuple(item["original_size"]) for item in items]
    return batch
