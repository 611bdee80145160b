"""The rectified-flow objective of Flux and SD3 (a denoiser backend's ``objective``).

A UNet backend has none: training and sampling use the DDPM schedule (``sampling.schedule``).
A flow-matching model sees ``x_s = (1 - s) x0 + s noise`` at noise level ``s`` in [0, 1] and
predicts the velocity ``noise - x0``. The trainer keeps drawing integer timesteps 0..999 (the
one draw of ``training.step``, so resume stays a pure function of (seed, step)); this object
maps them to ``u = (t + 1) / 1000`` and then to the model's shifted noise level

    s = shift * u / (1 + (shift - 1) * u)

which is the time shift of both ComfyUI's ``ModelSamplingSD3`` (shift 3.0) and
``ModelSamplingFlux`` (``exp(mu) / (exp(mu) + 1/u - 1)`` is this formula with shift ``exp(mu)``).
Sampling is the Euler method over descending ``u``, ending at ``s = 0``.
"""

from __future__ import annotations

import math

import torch

TRAIN_TIMESTEPS = 1000

FLUX_SHIFT = math.exp(1.15)
"""ComfyUI's ModelSamplingFlux default (``shift`` = mu = 1.15 in its exponential form)."""
SD3_SHIFT = 3.0
"""ComfyUI's ModelSamplingSD3 default for SD3 / SD3.5."""


class FlowMatching:
    """Noise levels, noising, velocity target and Euler steps of a rectified-flow model."""

    prediction_type = "flow"

    def __init__(self, shift: float):
        if not shift > 0:
            raise ValueError(f"flow matching: shift {shift} must be positive")
        self.shift = float(shift)

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise level of each timestep (integers 0..999 from training, or the sampler's floats);
        timestep -1 is the clean end, noise level 0."""
        u = ((timesteps.double() + 1) / TRAIN_TIMESTEPS).clamp(0.0, 1.0)
        return (self.shift * u / (1 + (self.shift - 1) * u)).float()

    def _level(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.sigmas(timesteps).to(like.device).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``(1 - s) x0 + s noise`` at each row's noise level."""
        s = self._level(timesteps, latents)
        return ((1 - s) * latents.float() + s * noise.float()).to(latents.dtype)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The velocity ``noise - x0`` (independent of the level)."""
        return noise.float() - latents.float()

    def sampling_timesteps(self, steps: int) -> list[float]:
        """``steps`` descending timesteps from pure noise (u = 1) down, the next level after the
        last being the clean end (-1)."""
        if steps < 1:
            raise ValueError(f"sampling steps: {steps} must be at least 1")
        return [TRAIN_TIMESTEPS * (1 - i / steps) - 1 for i in range(steps)]

    def sample_step(self, velocity: torch.Tensor, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        """One Euler step from level s(t) to s(t_next) along the predicted velocity."""
        levels = self.sigmas(torch.tensor([t, t_next]))
        return x + (float(levels[1]) - float(levels[0])) * velocity
