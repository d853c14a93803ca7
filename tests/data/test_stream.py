"""The deterministic, resumable training stream (subject / backbone / class slots)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import Dataset

from dreambat.data.stream import BACKBONE, CLASS, SUBJECT, TrainingStream
from dreambat.data.subject import SubjectDataset
from dreambat.errors import ConfigError, DataError


class Tagged(Dataset):
    """Item i is a constant image of value i (so a batch row tells which item it is), with an
    optional global-RNG jitter standing in for a dataset that augments with torch's RNG."""

    def __init__(self, n: int, prompt: str, *, jitter: bool = False, size: int = 8):
        self.n, self.prompt, self.jitter, self.size = n, prompt, jitter, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        pixels = torch.full((3, self.size, self.size), float(index))
        if self.jitter:
            pixels = pixels + 0.01 * torch.rand(())
        return {"pixel_values": pixels, "prompt": f"{self.prompt} {index}", "key": f"{self.prompt}-{index}"}


def _stream(**overrides) -> TrainingStream:
    settings = dict(subject=Tagged(5, "subject"), batch_size=3, seed=7)
    return TrainingStream(**{**settings, **overrides})


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["pixel_values"], b["pixel_values"]) and a["prompts"] == b["prompts"] \
        and a["sources"] == b["sources"]


def test_batches_depend_only_on_seed_process_and_step():
    make = lambda seed=7: _stream(backbone=Tagged(11, "bb", jitter=True), gamma=0.5, seed=seed)
    first, second = make(), make()
    for step in (0, 1, 5, 40):
        assert _same(first.batch(step), second.batch(step))
    # Order of access does not matter: step 5 first gives the same batch.
    assert _same(make().batch(5), first.batch(5))
    assert not all(_same(first.batch(s), make(seed=8).batch(s)) for s in range(4))


def test_restart_equals_the_tail_of_a_full_run():
    stream = _stream(backbone=Tagged(11, "bb"), gamma=0.3)
    full = list(itertools.islice(stream.iterate(0), 8))
    tail = list(itertools.islice(_stream(backbone=Tagged(11, "bb"), gamma=0.3).iterate(5), 3))
    assert all(_same(a, b) for a, b in zip(full[5:], tail))


def test_dataloader_workers_give_the_same_batches():
    stream = _stream(class_images=Tagged(4, "class"))
    direct = [stream.batch(step) for step in range(2, 6)]
    workers = list(_stream(class_images=Tagged(4, "class")).iterate(2, 6, num_workers=1))
    assert len(workers) == 4 and all(_same(a, b) for a, b in zip(direct, workers))


def test_the_global_rng_is_left_alone():
    stream = _stream(backbone=Tagged(11, "bb", jitter=True), gamma=0.5)
    before = torch.get_rng_state()
    stream.batch(3)
    assert torch.equal(before, torch.get_rng_state())


def test_without_backbone_subject_images_come_in_shuffled_epochs_across_processes():
    n, batch = 5, 2
    streams = [_stream(subject=Tagged(n, "s"), batch_size=batch, process_index=p, num_processes=2)
               for p in range(2)]
    # Global order: step 0 of process 0, step 0 of process 1, step 1 of process 0, ...
    order = [int(row[0, 0, 0]) for step in range(5) for s in streams
             for row in s.batch(step)["pixel_values"]]
    epochs = [order[i:i + n] for i in range(0, len(order), n)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch
    assert streams[0].batch(0)["sources"] == [SUBJECT] * batch


def test_backbone_share_is_gamma_within_a_binomial_bound():
    gamma, batch, steps = 0.75, 4, 500
    stream = _stream(backbone=Tagged(13, "bb"), gamma=gamma, batch_size=batch, num_processes=2)
    counts = stream.count_sources(steps, all_processes=True)
    slots = steps * batch * 2
    assert counts[SUBJECT] + counts[BACKBONE] == slots
    assert abs(counts[BACKBONE] - gamma * slots) <= 4 * math.sqrt(slots * gamma * (1 - gamma))
    # The plan's counts are what the batches actually hold, and each backbone row has its caption.
    drawn = list(itertools.islice(stream.iterate(0), 20))
    assert stream.drawn == stream.count_sources(20)
    for b in drawn:
        for prompt, source in zip(b["prompts"], b["sources"]):
            assert prompt.startswith("bb" if source == BACKBONE else "subject")


def test_prior_batches_hold_b_instance_then_b_class_rows():
    stream = _stream(class_images=Tagged(4, "a dog"), backbone=Tagged(6, "bb"), gamma=0.5)
    b = stream.batch(2)
    assert b["pixel_values"].shape == (6, 3, 8, 8)
    assert b["sources"][3:] == [CLASS] * 3 and CLASS not in b["sources"][:3]
    assert all(p.startswith("a dog") for p in b["prompts"][3:])
    assert stream.count_sources(10)[CLASS] == 30


def test_subject_augmentation_is_seeded_per_slot(subject_dir):
    make = lambda: TrainingStream(
        SubjectDataset(subject_dir, "a sks star", 32, random_flip=True), batch_size=2, seed=1)
    a, b = make(), make()
    assert all(torch.equal(a.batch(s)["pixel_values"], b.batch(s)["pixel_values"]) for s in (0, 4, 9))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="gamma"):
        _stream(gamma=0.5)
    with pytest.raises(ConfigError, match="gamma"):
        _stream(backbone=Tagged(3, "bb"), gamma=1.0)
    with pytest.raises(DataError, match="training resolution"):
        stream = _stream(backbone=Tagged(3, "bb", size=16), gamma=0.5)
        for step in range(10):
            stream.batch(step)
