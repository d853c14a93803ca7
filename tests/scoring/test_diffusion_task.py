import pytest
import torch

from dreambat.scoring.diffusion_task import fixed_timesteps
from dreambat.scoring.draws import DrawDesign, noise_seed
from dreambat.errors import ConfigError
from tests.albat.conftest import image_batch


def test_timesteps_are_evenly_spread_slice_centres():
    assert fixed_timesteps(4, 1000).tolist() == [125, 375, 625, 875]
    assert fixed_timesteps(1, 1000).tolist() == [500]


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_bad_number_of_timesteps(k):
    with pytest.raises(ConfigError):
        fixed_timesteps(k, 1000)


def test_noise_depends_only_on_key_and_timestep():
    a = DrawDesign(3).noise(["x", "y"], (4, 2, 2))
    b = DrawDesign(3).noise(["y", "x"], (4, 2, 2))
    torch.testing.assert_close(a[0], b[1])
    assert not torch.equal(a[0, 0], a[0, 1]) and not torch.equal(a[0], a[1])
    assert noise_seed("x", 0) == noise_seed("x", 0) != noise_seed("x", 1)


def test_loss_matrix_is_deterministic_and_per_sample(unet_task):
    task, _ = unet_task
    batch = image_batch(3, seed=4)
    with torch.no_grad():
        first = task.loss_matrix(batch)
        again = task.loss_matrix(batch)
        alone = task.loss_matrix({k: v[1:2] for k, v in batch.items()})
    assert first.shape == (3, 2)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first[1:2], alone, rtol=1e-5, atol=1e-7)


def test_reference_rows_in_chunks_of_terms_equal_the_whole_batch(unet_task):
    from dreambat.albat.gradients import reference_rows
    from dreambat.scoring.diffusion_task import DiffusionLossTask

    base, blocks = unet_task
    task = DiffusionLossTask(base.backbone, DrawDesign(2, 3, antithetic=True))  # 12 terms
    batch = image_batch(1, seed=7)
    whole = reference_rows(task, blocks, [batch])
    chunked = reference_rows(task, blocks, task.chunks(batch, 5))  # 5 + 5 + 2 terms
    assert [len(c["terms"]) for c in task.chunks(batch, 5)] == [5, 5, 2]
    for name in blocks.names:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-7)
