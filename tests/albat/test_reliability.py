"""Split-half reliability: the half-estimates equal real half-budget runs, and the statistics."""

import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import spearmanr

from dreambat.albat import AlbatScorer, LoraBlocks, get_strategy
from dreambat.albat.gradients import contracted_terms, reference_term_scores
from dreambat.albat.reliability import spearman, split_half_reliability
from tests.albat.conftest import MLP, image_batch



class NoisyRegressionTask:
    """K Monte Carlo terms per sample: the squared error at an input jittered by fixed noise.

    ``terms`` selects which of the batch's noise draws this task uses (a half-budget run).
    """

    def __init__(self, model, terms):
        self.model = model
        self.terms = list(terms)

    def loss_matrix(self, batch):
        x, y, eps = batch
        jittered = x[:, None, :] + eps[:, self.terms]
        return (self.model(jittered.reshape(-1, x.shape[1])).reshape(len(x), -1) - y[:, None]) ** 2

    def batch_size(self, batch):
        return len(batch[0])

    def term_halves(self):
        k = len(self.terms)
        return list(range(0, k, 2)), list(range(1, k, 2))

    def term_groups(self):
        return [0] * len(self.terms)


def _batch(n, k, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return x, x[:, :3].sum(1), 0.5 * torch.randn(n, k, 6, generator=generator)


@pytest.fixture
def peft_mlp():
    torch.manual_seed(0)
    return get_peft_model(MLP(), LoraConfig(r=3, target_modules=["fc1", "fc2"], init_lora_weights=False))


def test_split_half_estimates_equal_two_real_half_budget_runs(peft_mlp):
    blocks = LoraBlocks.from_models(peft_mlp)
    reference, candidates = _batch(8, 6, seed=1), _batch(40, 4, seed=2)
    full = AlbatScorer(NoisyRegressionTask(peft_mlp, range(4)), blocks, get_strategy("exact"),
                       reference_task=NoisyRegressionTask(peft_mlp, range(6)))
    full.fit([reference])
    split = full.score_batch_split(candidates).split
    # Run "A, a": reference draws 0, 2, 4 and candidate draws 0, 2; run "B, b": the others.
    for column, ref_terms, cand_terms in ((0, [0, 2, 4], [0, 2]), (3, [1, 3, 5], [1, 3])):
        run = AlbatScorer(NoisyRegressionTask(peft_mlp, cand_terms), blocks, get_strategy("exact"),
                          reference_task=NoisyRegressionTask(peft_mlp, ref_terms))
        run.fit([reference])
        torch.testing.assert_close(split[:, column], run.score_batch(candidates), rtol=1e-6, atol=1e-10)
    estimate = split_half_reliability(split.numpy())
    assert estimate.half_run == pytest.approx(spearmanr(split[:, 0], split[:, 3]).statistic, abs=1e-12)


def test_fast_split_terms_equal_the_per_term_backward_loop(unet_task):
    task, blocks = unet_task
    generator = torch.Generator().manual_seed(0)
    directions = {n: torch.randn(3, p.numel(), generator=generator) for n, p in blocks}
    batch = image_batch(4, offset=50, seed=3)
    fast = contracted_terms(task, blocks, directions, batch)
    slow = reference_term_scores(task, blocks, directions, batch)
    assert fast.shape == slow.shape == (4, 2, 3)
    assert ((fast - slow).abs().max() / slow.abs().max()).item() < 1e-5


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_variance_components_recover_a_known_model():
    """Simulated ranks with known signal, reference, candidate and interaction noise."""
    rng = np.random.default_rng(1)
    n, signal, a, b, e = 20000, 1.0, 0.8, 0.3, 0.2
    t = rng.normal(0, signal, n)
    ref = {h: rng.normal(0, a, n) for h in "AB"}
    cand = {h: rng.normal(0, b, n) for h in "ab"}
    split = np.stack([t + ref[r] + cand[c] + rng.normal(0, e, n) for r, c in ("Aa", "Ab", "Ba", "Bb")], axis=1)
    estimate = split_half_reliability(split)
    noise = a**2 / 2 + b**2 / 2 + e**2 / 4
    # Ranks are a monotone transform of normal scores: the components hold approximately.
    assert estimate.full_run == pytest.approx(signal / (signal + noise), abs=0.03)
    assert estimate.limited_by == "reference"
    assert estimate.spearman_brown <= estimate.full_run + 0.01
    assert math.isclose(estimate.reference_noise + estimate.candidate_noise + estimate.interaction_noise, 1.0)


@pytest.mark.parametrize("a, b, side", [(0.8, 0.3, "reference"), (0.3, 0.8, "candidates")])
def test_the_noisier_side_is_named_and_the_advice_raises_its_flag(a, b, side):
    """Reference noise a and candidate noise b swapped: the report names the other side, and the
    warning advises the flag of that side."""
    from dreambat.scoring.config import ScoringConfig
    from dreambat.scoring.reliability import reliability_advice

    rng = np.random.default_rng(2)
    n = 5000
    t = rng.normal(0, 0.5, n)
    ref = {h: rng.normal(0, a, n) for h in "AB"}
    cand = {h: rng.normal(0, b, n) for h in "ab"}
    split = np.stack([t + ref[r] + cand[c] for r, c in ("Aa", "Ab", "Ba", "Bb")], axis=1)
    estimate = split_half_reliability(split)
    assert estimate.limited_by == side
    larger = estimate.reference_noise if side == "reference" else estimate.candidate_noise
    assert larger > 0.7  # 0.64 / (0.64 + 0.09) of the noise, approximately
    advice = reliability_advice(estimate.to_dict(), ScoringConfig())
    assert f"mostly from the {side}" in advice
    assert ("--reference_draws" in advice) == (side == "reference")
    assert ("--num_score_timesteps" in advice) == (side == "candidates")


def test_too_few_candidates_give_no_estimate():
    assert split_half_reliability(np.ones((2, 4))) is None
    assert split_half_reliability(np.full((5, 4), np.nan)) is None
