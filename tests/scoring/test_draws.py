"""The draws behind the per-sample diffusion loss: seeds, common noise, antithetic pairs, halves."""

import pytest
import torch

from dreambat.errors import ConfigError
from dreambat.scoring.draws import DrawDesign, noise_seed

SHAPE = (4, 2, 2)


def test_same_seed_same_draws_other_seed_other_draws():
    a = DrawDesign(4, 2, seed=3).noise(["x", "y"], SHAPE)
    assert torch.equal(a, DrawDesign(4, 2, seed=3).noise(["x", "y"], SHAPE))
    b = DrawDesign(4, 2, seed=4).noise(["x", "y"], SHAPE)
    assert not torch.equal(a[0, 0], b[0, 0])


def test_seed_zero_first_draw_hashes_as_before():
    """Held-out losses (one draw per timestep, seed 0) keep the noise of earlier versions."""
    import hashlib

    digest = hashlib.blake2b("key\x1f3".encode(), digest_size=8).digest()
    assert noise_seed("key", 3) == int.from_bytes(digest, "little") & (2**63 - 1)
    assert len({noise_seed("key", 3), noise_seed("key", 3, 1), noise_seed("key", 3, 0, 1)}) == 3


def test_common_noise_is_shared_by_every_sample_and_slot_specific():
    noise = DrawDesign(3, 2, common_noise=True).noise(["x", "y", "z"], SHAPE)
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[2])
    assert not torch.equal(noise[0, 0], noise[0, 1])
    private = DrawDesign(3, 2).noise(["x", "y"], SHAPE)
    assert not torch.equal(private[0], private[1])


def test_antithetic_pairs_negate_at_the_same_timestep():
    design = DrawDesign(2, 2, antithetic=True)
    noise = design.noise(["x"], SHAPE)[0]
    steps = design.timesteps_for(1000)
    assert design.num_terms == 8 and noise.shape[0] == 8
    for j in range(0, 8, 2):
        assert torch.equal(noise[j], -noise[j + 1]) and steps[j] == steps[j + 1]


@pytest.mark.parametrize("design", [
    DrawDesign(4), DrawDesign(4, 3), DrawDesign(3, 2, antithetic=True), DrawDesign(2, antithetic=True),
])
def test_halves_are_disjoint_cover_every_term_and_keep_pairs_together(design):
    first, second = design.halves()
    assert sorted(first + second) == list(range(design.num_terms)) and not set(first) & set(second)
    slots = design.slots()
    if design.draws_per_timestep > 1:  # each half covers every stratum
        assert {slots[j][0] for j in first} == {slots[j][0] for j in second} == set(range(design.num_timesteps))
    for half in (first, second):  # an antithetic pair is never split
        assert {(slots[j][0], slots[j][1]) for j in half}.isdisjoint(
            {(slots[j][0], slots[j][1]) for j in (second if half is first else first)})


def test_stratified_timesteps_stay_in_their_stratum_and_follow_the_seed():
    design = DrawDesign(4, 8, timesteps="stratified", seed=1)
    steps = design.timesteps_for(1000)
    for (k, _, _), t in zip(design.slots(), steps.tolist()):
        assert 250 * k <= t < 250 * (k + 1)
    assert len(set(steps.tolist())) > 4
    assert torch.equal(steps, DrawDesign(4, 8, timesteps="stratified", seed=1).timesteps_for(1000))
    assert not torch.equal(steps, DrawDesign(4, 8, timesteps="stratified", seed=2).timesteps_for(1000))
    assert DrawDesign(4).timesteps_for(1000).tolist() == [125, 375, 625, 875]


def test_bad_designs_are_refused():
    with pytest.raises(ConfigError):
        DrawDesign(0)
    with pytest.raises(ConfigError):
        DrawDesign(2, 0)
    with pytest.raises(ConfigError):
        DrawDesign(2, timesteps="random")
