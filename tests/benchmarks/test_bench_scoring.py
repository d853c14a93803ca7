"""The benchmark's own comparison paths must agree with the library's per-sample loop."""

import torch

from benchmarks.bench_scoring import Setup, parse_args, vmap_scores
from dreambat.albat.gradients import reference_scores


def test_vmap_scores_use_the_full_direction_and_match_the_per_sample_loop(tmp_path):
    args = parse_args(["--size", "test", "--candidates", "2", "--batch_size", "2", "--device", "cpu"])
    setup = Setup(args, tmp_path)
    batch = setup.candidates[0]
    expected = reference_scores(setup.task, setup.blocks, setup.directions, batch)
    assert torch.allclose(vmap_scores(setup, batch).cpu(), expected, rtol=1e-4, atol=1e-6)
