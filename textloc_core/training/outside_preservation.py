"""Outside preservation: outside the concepts' masks, the adapted model keeps predicting what the
base model predicts for the same noisy photo.

The masked loss (``unmasked_weight`` 0) stops the photo's other objects from being learned, but
it says nothing about the rest of the picture, so the K/V deltas and the token are free to
change it: samples then draw the concept twice, or a second object in the companion's colour.
This term closes that gap without teaching the companion: for every instance row it runs the
unchanged base model (K/V deltas at strength 0) on the same noisy latent and timestep, with the
prompt's identifier tokens removed (``"a <tok> star"`` -> ``"a star"``), and penalises the
difference between the trained prediction and that one over the pixels outside the union of
the row's named masks. At high noise, where the layout is decided, the base model's prediction
is a plain "star" picture; at low noise it reconstructs what the noisy photo shows. Either way
the identifier token gains nothing outside its mask.

It costs one forward without gradient over the instance rows a step.
"""

from __future__ import annotations

import re

import torch

from ..data.masks import mask_to_grid


def without_tokens(prompt: str, tokens: list[str]) -> str:
    """``prompt`` with every identifier token removed and the spaces tidied: the class prompt
    the base model is asked for (``"photo of a <tw1> star"`` -> ``"photo of a star"``)."""
    for token in tokens:
        prompt = prompt.replace(token, " ")
    return re.sub(r"\s+", " ", prompt).strip()


def base_prediction(run, noisy: torch.Tensor, timesteps: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The base model's (float32, detached) prediction for ``noisy`` at ``timesteps``, each row
    with its prompt's identifier tokens removed. The K/V deltas are switched off and the
    attention router records nothing for this forward; both are restored afterwards."""
    denoiser, injector, router = run.bundle.denoiser, run.injector, run.router
    plain = [without_tokens(p, run.tokens) for p in prompts]
    unique = list(dict.fromkeys(plain))
    strength = injector.strength
    slots = None if router is None else router.token_slots
    with torch.no_grad():
        encoded = run.bundle.text.encode(unique, {})
        which = torch.tensor([unique.index(p) for p in plain], device=encoded.context.device)
        context = encoded.context[which]
        pooled = None if encoded.pooled is None else encoded.pooled[which]
        dtype = run.bundle.compute_dtype
        try:
            injector.strength = 0.0
            if router is not None:
                router.token_slots = None
            pred = denoiser.predict(noisy.to(dtype), timesteps, context.to(dtype), pooled)
        finally:
            injector.strength = strength
            if router is not None:
                router.token_slots = slots
                router.clear()
    return pred.float().detach()


def outside_loss(pred: torch.Tensor, base: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``pred`` and ``base`` (B, C, h, w) over the pixels outside the
    union of each row's (B, K, H, W) ``masks``, per channel; 0 where a row's masks cover it all."""
    union = mask_to_grid(masks.amax(dim=1), tuple(pred.shape[-2:])).unsqueeze(1)
    outside = 1 - union
    return ((pred - base) ** 2 * outside).sum() / (outside.sum() * pred.shape[1]).clamp_min(1e-8)
