"""The Stable Diffusion noise schedule, training targets, and a DDIM sampler with CFG.

Plain torch so the trainer and the prior generator need no framework scheduler:
"scaled linear" betas from 0.00085 to 0.012 over 1000 steps (SD1.x/2.x/XL), DDPM forward
noising for training, and deterministic DDIM (eta 0, "leading" spacing, offset 1, as the
SD pipelines configure it) for sampling. The sampler can route cross-attention through an
``AttentionRouter`` so token maps are captured while generating.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..attention.cross_attention import AttentionRouter, CapturedMap
from ..backends.base import DenoiserBackend
from ..stop import check_stop

TRAIN_TIMESTEPS = 1000

SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": TRAIN_TIMESTEPS,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
"""This schedule as a diffusers scheduler config (SD1.x's: DDPM training, DDIM sampling)."""


def alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """(steps,) float64 cumulative product of 1 - beta for the scaled-linear schedule."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


_ALPHAS = alphas_cumprod()


def _coefficients(timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = _ALPHAS.to(like.device)[timesteps.long().to(like.device)].to(torch.float32)
    shape = (-1,) + (1,) * (like.dim() - 1)
    return a.sqrt().view(shape), (1.0 - a).sqrt().view(shape)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """DDPM forward process: sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    sa, sb = _coefficients(timesteps, latents)
    return (sa * latents.float() + sb * noise.float()).to(latents.dtype)


def training_target(
    prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should output: the noise ("epsilon") or v = sqrt(a) noise - sqrt(1-a) x0."""
    if prediction_type == "epsilon":
        return noise.float()
    if prediction_type == "v_prediction":
        sa, sb = _coefficients(timesteps, latents)
        return sa * noise.float() - sb * latents.float()
    raise ValueError(f"prediction_type: {prediction_type!r} is not 'epsilon' or 'v_prediction'")


def noised_and_target(
    denoiser, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy latents, training target) for the denoiser's objective: its own ``objective``
    (flow matching for Flux / SD3: ``backends.flow_matching``) when it has one, else DDPM
    noising with the epsilon / v target of its ``prediction_type``."""
    objective = getattr(denoiser, "objective", None)
    if objective is not None:
        return objective.add_noise(latents, noise, timesteps), objective.training_target(latents, noise, timesteps)
    return add_noise(latents, noise, timesteps), training_target(denoiser.prediction_type, latents, noise, timesteps)


def ddim_timesteps(steps: int) -> list[int]:
    """Descending timesteps for ``steps`` DDIM steps ("leading" spacing, offset 1)."""
    if not 1 <= steps <= TRAIN_TIMESTEPS:
        raise ValueError(f"sampling steps: {steps} must be between 1 and {TRAIN_TIMESTEPS}")
    ratio = TRAIN_TIMESTEPS // steps
    return [min(i * ratio + 1, TRAIN_TIMESTEPS - 1) for i in range(steps)][::-1]


def _to_eps_x0(prediction_type: str, out: torch.Tensor, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = _ALPHAS[t].item()
    sa, sb = a**0.5, (1 - a) ** 0.5
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - sb * eps) / sa
    elif prediction_type == "v_prediction":
        x0 = sa * x - sb * out
        eps = sa * out + sb * x
    else:
        raise ValueError(f"prediction_type: {prediction_type!r} is not 'epsilon' or 'v_prediction'")
    return eps, x0


def guided_conditioning(encoded, n: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``ddim_sample``'s ``cond`` / ``uncond`` (and, for UNets that take them, ``cond_pooled`` /
    ``uncond_pooled``) keywords from a text backend's encoding of ``[prompt, negative]``, each
    row repeated ``n`` times and cast to ``dtype``."""
    rows = {"cond": encoded.context[:1], "uncond": encoded.context[1:2]}
    if encoded.pooled is not None:
        rows.update(cond_pooled=encoded.pooled[:1], uncond_pooled=encoded.pooled[1:2])
    return {key: row.expand(n, *row.shape[1:]).to(dtype) for key, row in rows.items()}


def _next_latents(denoiser, out: torch.Tensor, x: torch.Tensor, t, prev) -> torch.Tensor:
    """One sampling step from timestep ``t`` to ``prev`` (-1: the end): the objective's own step
    (an Euler step for flow matching), else DDIM for the UNet's prediction type."""
    objective = getattr(denoiser, "objective", None)
    if objective is not None:
        return objective.sample_step(out, x, t, prev)
    eps, x0 = _to_eps_x0(denoiser.prediction_type, out, x, t)
    # Last step lands on alpha_0, not 1 (set_alpha_to_one=False in SD's scheduler config).
    a_prev = _ALPHAS[max(prev, 0)].item()
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


@torch.no_grad()
def ddim_sample(
    denoiser: DenoiserBackend,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    latents: torch.Tensor,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    router: AttentionRouter | None = None,
    on_maps: Callable[[int, list[CapturedMap]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cond_pooled: torch.Tensor | None = None,
    uncond_pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise initial noise ``latents`` (B, C, h, w) with classifier-free guidance (DDIM, or
    Euler steps for a denoiser with a flow-matching ``objective``).

    ``cond``/``uncond``: (B, L, D) contexts (``uncond`` None or guidance 1 -> no CFG), with
    their (B, P) pooled embeddings for UNets that take them (SDXL). The
    UNet sees one batch [uncond; cond]. With ``router``, its ``token_slots`` must be set for
    that doubled batch; after each step ``on_maps(step, captured)`` gets the captured maps
    and the router is cleared. ``should_stop`` is polled before every step (``stop.Cancelled``).
    """
    use_cfg = uncond is not None and guidance_scale != 1.0
    context = torch.cat([uncond, cond]) if use_cfg else cond
    pooled = cond_pooled
    if use_cfg and cond_pooled is not None:
        pooled = torch.cat([uncond_pooled, cond_pooled])
    x = latents.float()
    objective = getattr(denoiser, "objective", None)  # flow models: Euler steps instead of DDIM
    timesteps = ddim_timesteps(steps) if objective is None else objective.sampling_timesteps(steps)
    dtype = next(denoiser.unet.parameters()).dtype
    routing = denoiser.route_attention(router) if router is not None else None
    if routing is not None:
        routing.__enter__()
    try:
        for i, t in enumerate(timesteps):
            check_stop(should_stop, f"at sampling step {i} of {len(timesteps)}")
            model_in = torch.cat([x, x]) if use_cfg else x
            t_batch = torch.full(
                (model_in.shape[0],), t, dtype=torch.long if objective is None else torch.float32, device=x.device
            )
            out = denoiser.predict(model_in.to(dtype), t_batch, context.to(dtype), pooled).float()
            if use_cfg:
                out_uncond, out_cond = out.chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
            if router is not None:
                if on_maps is not None:
                    on_maps(i, list(router.captured))
                router.clear()
            x = _next_latents(denoiser, out, x, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1)
    finally:
        if routing is not None:
            routing.__exit__(None, None, None)
    return x
