import torch
from diffusers import DDPMScheduler

from dreambat.diffusion import denoising_loss, diffusion_target, offset_noise


def _scheduler(prediction_type):
    return DDPMScheduler(steps_offset=1, clip_sample=False, prediction_type=prediction_type,
                         beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_targets_follow_the_prediction_type():
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 400, 999])
    assert torch.equal(diffusion_target(_scheduler("epsilon"), latents, noise, t), noise)
    sched = _scheduler("v_prediction")
    alpha_bar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    assert torch.allclose(diffusion_target(sched, latents, noise, t), expected, atol=1e-5)


def test_min_snr_weighting_matches_the_formula():
    sched = _scheduler("epsilon")
    pred, target = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([5, 100, 500, 990])
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(denoising_loss(pred, target), mse)
    alpha_bar = sched.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = mse * torch.minimum(snr, torch.tensor(5.0)) / snr
    got = denoising_loss(pred, target, scheduler=sched, timesteps=t, snr_gamma=5.0)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_offset_noise_adds_a_per_channel_constant():
    latents = torch.zeros(2, 4, 16, 16)
    plain = offset_noise(latents, 0.0, torch.Generator().manual_seed(0))
    shifted = offset_noise(latents, 0.5, torch.Generator().manual_seed(0))
    delta = shifted - plain
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta))
    assert delta.abs().max() > 0
