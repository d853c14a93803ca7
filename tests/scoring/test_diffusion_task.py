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


def test_a_loss_term_equals_one_computed_by_hand(tiny_backbone):
    """Term (i, j) of the loss matrix is ‖ε_θ(√ᾱ_t·z + √(1-ᾱ_t)·ε, t, c) − ε‖² / n, with z the VAE
    posterior mean times its scaling factor, built here from the components alone."""
    from dreambat.backbone.load import load_backbone
    from dreambat.scoring.diffusion_task import DiffusionLossTask

    backbone = load_backbone(str(tiny_backbone))
    scale = backbone.vae.config.scaling_factor
    assert scale != 1.0  # else dropping it would go unseen
    task = DiffusionLossTask(backbone, 3)
    batch = image_batch(2, seed=7)
    with torch.no_grad():
        losses = task.loss_matrix(batch)
        z = backbone.vae.encode(batch["pixel_values"]).latent_dist.mean * scale
        noise = DrawDesign(3).noise(batch["keys"], z.shape[1:])
        alphas = backbone.noise_scheduler.alphas_cumprod
        for i in range(2):
            ids = backbone.tokenizer([batch["prompts"][i]], padding="max_length", truncation=True,
                                     max_length=backbone.tokenizer.model_max_length, return_tensors="pt").input_ids
            context = backbone.text_encoder(ids)[0]
            for j, t in enumerate(fixed_timesteps(3, len(alphas)).tolist()):
                eps = noise[i, j]
                noisy = alphas[t].sqrt() * z[i] + (1 - alphas[t]).sqrt() * eps
                prediction = backbone.unet(noisy[None], torch.tensor([t]), context).sample[0]
                expected = (prediction - eps).pow(2).mean()
                torch.testing.assert_close(losses[i, j], expected, rtol=1e-4, atol=1e-6)
