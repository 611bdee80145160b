"""Our plain-torch schedule agrees with diffusers' SD schedulers (the models were trained on it)."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from textloc_core.sampling import schedule

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def test_add_noise_and_v_target_match_ddpm():
    ddpm = DDPMScheduler(**SD, prediction_type="v_prediction")
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(schedule.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t), atol=1e-5)
    assert torch.allclose(
        schedule.training_target("v_prediction", x0, noise, t), ddpm.get_velocity(x0, noise, t), atol=1e-5
    )
    assert torch.equal(schedule.training_target("epsilon", x0, noise, t), noise)
    with pytest.raises(ValueError, match="prediction_type"):
        schedule.training_target("sample", x0, noise, t)


class _Constant:
    """A denoiser whose UNet output is a fixed linear function of its input (for the sampler)."""

    prediction_type = "epsilon"

    def __init__(self):
        self.unet = torch.nn.Linear(1, 1)

    def predict(self, x, t, context, pooled=None):
        return 0.3 * x + context.mean() * 0.0

    def route_attention(self, router):  # pragma: no cover - not routed here
        raise AssertionError


def test_ddim_matches_diffusers_ddim_scheduler():
    ddim = DDIMScheduler(**SD, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", clip_sample=False)
    ddim.set_timesteps(10)
    assert schedule.ddim_timesteps(10) == ddim.timesteps.tolist()
    start = torch.randn(2, 4, 4, 4)
    x = start.clone()
    for t in ddim.timesteps:
        x = ddim.step(0.3 * x, t, x).prev_sample
    ours = schedule.ddim_sample(_Constant(), torch.zeros(2, 3, 5), None, start, steps=10)
    assert torch.allclose(ours, x, rtol=1e-4, atol=1e-4)
