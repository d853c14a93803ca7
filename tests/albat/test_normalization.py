"""Scores that rank by direction: cosine influence per candidate and per term, on the fast hook path and
the plain loop, checked against gradients computed here with autograd alone; and the losses and
gradient norms every scored record carries."""

import math

import pytest
import torch

from dreambat.albat import (
    AlbatScorer,
    ManifestWriter,
    SettingError,
    contract_batch,
    get_strategy,
    read_manifest,
    reference_term_norms,
    score_candidates,
)
from tests.albat.conftest import image_batch


def _explicit_term_gradients(task, blocks, batch):
    """``[B, K, d]`` gradients of ``ℓ_k(x_i) / K`` over all blocks, one autograd call per term."""
    losses = task.loss_matrix(batch)
    losses = losses[:, None] if losses.ndim == 1 else losses
    n, k = losses.shape
    rows = []
    for i in range(n):
        per_term = []
        for j in range(k):
            grads = torch.autograd.grad(losses[i, j] / k, list(blocks.params), retain_graph=True, allow_unused=True)
            per_term.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                                       for g, p in zip(grads, blocks.params)]))
        rows.append(torch.stack(per_term))
    return torch.stack(rows), losses.detach().double()


def _direction(scorer):
    return torch.cat([scorer.directions[name].double().reshape(-1, scorer.directions[name].shape[-1])[0]
                      for name in scorer.blocks.names])


def _fitted(task, blocks, reference, normalization):
    scorer = AlbatScorer(task, blocks, get_strategy("exact"), normalization=normalization)
    scorer.fit([reference])
    return scorer


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_candidate_cosine_on_an_mlp(mlp_task, path):
    task, blocks = mlp_task
    generator = torch.Generator().manual_seed(5)
    reference = (torch.randn(6, 6, generator=generator), torch.randn(6, generator=generator))
    candidates = (torch.randn(7, 6, generator=generator), torch.randn(7, generator=generator) * 3)
    plain = _fitted(task, blocks, reference, "none").score_batch_split(candidates, path=path)
    cosine = _fitted(task, blocks, reference, "candidate").score_batch_split(candidates, path=path)
    gradients, losses = _explicit_term_gradients(task, blocks, candidates)
    g = gradients.sum(dim=1)
    h = _direction(_fitted(task, blocks, reference, "none"))
    torch.testing.assert_close(plain.scores, g @ h, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(cosine.scores, (g @ h) / (g.norm(dim=1) * h.norm()), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(cosine.grad_norms, g.norm(dim=1), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(cosine.losses, losses.mean(dim=1), rtol=1e-6, atol=1e-8)
    assert cosine.scores.abs().max() <= 1 + 1e-9
    # The cosine keeps the sign and the order within candidates of equal gradient norm only.
    assert torch.equal(torch.sign(cosine.scores), torch.sign(plain.scores))


def test_timestep_cosine_and_norms_on_the_tiny_unet(unet_task):
    task, blocks = unet_task
    reference, candidates = image_batch(3, seed=1), image_batch(4, offset=10, seed=2)
    found = contract_batch(task, blocks, {n: torch.zeros(p.numel()) for n, p in zip(blocks.names, blocks.params)},
                           candidates, norms=True)
    term_norms, sample_norms = reference_term_norms(task, blocks, candidates)
    torch.testing.assert_close(found.term_norms, term_norms, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(found.sample_norms, sample_norms, rtol=1e-4, atol=1e-8)
    gradients, _ = _explicit_term_gradients(task, blocks, candidates)
    torch.testing.assert_close(found.term_norms, gradients.norm(dim=2), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(found.sample_norms, gradients.sum(dim=1).norm(dim=1), rtol=1e-4, atol=1e-8)

    h = _direction(_fitted(task, blocks, reference, "none"))
    expected = ((gradients @ h) / (gradients.norm(dim=2) * h.norm())).mean(dim=1)
    for path in ("fast", "reference"):
        scored = _fitted(task, blocks, reference, "timestep").score_batch_split(candidates, path=path)
        torch.testing.assert_close(scored.scores, expected, rtol=1e-4, atol=1e-7)


def test_normalised_split_halves_average_to_the_score(unet_task):
    task, blocks = unet_task

    class Halved:  # two halves of the K = 2 terms, one each
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def term_halves(self):
            return [0], [1]

    halved = Halved(task)
    candidates = image_batch(4, offset=10, seed=2)
    gradients, _ = _explicit_term_gradients(task, blocks, candidates)
    for normalization in ("candidate", "timestep"):
        scorer = AlbatScorer(halved, blocks, get_strategy("exact"), normalization=normalization)
        scorer.fit([image_batch(3, seed=1)])
        scored = scorer.score_batch_split(candidates)
        for direction, columns in ((1, [0, 1]), (2, [2, 3])):  # reference half A: Z_Aa, Z_Ab; half B: Z_Ba, Z_Bb
            h = torch.cat([scorer.directions[name][direction].double() for name in blocks.names])
            dots = gradients @ h
            if normalization == "candidate":
                expected = dots.sum(dim=1) / (gradients.sum(dim=1).norm(dim=1) * h.norm())
            else:
                expected = (dots / (gradients.norm(dim=2) * h.norm())).mean(dim=1)
            # the two candidate halves are two unbiased halves of the score along that direction
            torch.testing.assert_close(scored.split[:, columns].mean(dim=1), expected, rtol=1e-4, atol=1e-7)


def test_records_carry_loss_and_gradient_norm(mlp_task, tmp_path):
    task, blocks = mlp_task
    scorer = _fitted(task, blocks, (torch.randn(4, 6), torch.randn(4)), "candidate")

    class Candidate:
        def __init__(self, index):
            self.index, self.key, self.x, self.y = index, f"k{index}", torch.randn(6), float(index)

    candidates = [Candidate(i) for i in range(5)]
    with ManifestWriter(tmp_path / "m.jsonl", fingerprint={"a": 1}) as writer:
        score_candidates(scorer, candidates, lambda cs: (torch.stack([c.x for c in cs]),
                                                         torch.tensor([c.y for c in cs])), writer, batch_size=2)
    records = read_manifest(tmp_path / "m.jsonl")
    scored = scorer.score_batch_split((torch.stack([c.x for c in candidates]), torch.tensor([c.y for c in candidates])))
    assert [r.grad_norm for r in records] == pytest.approx(scored.grad_norms.tolist(), rel=1e-5)
    assert [r.loss for r in records] == pytest.approx(scored.losses.tolist(), rel=1e-5)
    assert all(math.isfinite(r.loss) and r.grad_norm > 0 for r in records)


def test_an_unknown_normalization_is_refused_in_core_terms(mlp_task):
    task, blocks = mlp_task
    with pytest.raises(SettingError, match="normalization") as error:
        AlbatScorer(task, blocks, get_strategy("exact"), normalization="unit")
    assert error.value.setting == "normalization" and "--" not in str(error.value)
