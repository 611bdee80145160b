"""textloc's backend protocols for ComfyUI's Flux.1 and SD3 / SD3.5 MODEL / CLIP / VAE.

The same ``ModelBundle`` as the diffusers DiT backends (``textloc_core.backends.joint_blocks``),
so training, adapters and maps are shared, and adapters are interchangeable between the two:

* W_K / W_V: the K and V row thirds of each joint block's fused text ``qkv`` (Flux
  ``double_blocks.i.txt_attn.qkv``, SD3 ``joint_blocks.i.context_block.attn.qkv``), trained as
  additive deltas through ``FusedRows`` (the core's ``KVDeltaInjector`` unchanged), keyed
  ``double_blocks.i.txt_attn.to_k`` / ``.to_v`` and ``joint_blocks.i.context_block.attn.to_k`` /
  ``.to_v`` as the diffusers backend keys them.
* The objective: ComfyUI's own ``model_sampling`` of the MODEL (``ComfyFlowObjective``), with
  whatever shift its loader or a ModelSampling node set.
* The map: a ``patches_replace["dit"]`` block patch per routed block that passes the joint
  attention's image queries and text keys to ``AttentionRouter.capture_text_map``
  (``comfy_internals.joint_attention_patch``); the attention stays ComfyUI's own kernel.
* Text: ``comfy_dit_text.ComfyDiTText`` (CLIP slices + a T5 output-space vector).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..textloc_core.adapters.formats import COMFY_UNET_PREFIX, text_kv_from_fused
from ..textloc_core.attention.cross_attention import AttentionRouter
from ..textloc_core.backends.base import ModelBundle
from ..textloc_core.backends.fingerprint import base_model_fingerprint
from .comfy_backend import ComfyDenoiserBackend, bundle_of
from .comfy_cancel import cancel_as_core
from .comfy_dit_text import ComfyDiTText
from .comfy_internals import (
    comfy_training_mode,
    differentiable_dit_blocks,
    dit_block_replacements,
    dit_forward,
    dit_layout,
    joint_attention_patch,
    model_parts,
    model_sampling,
    ordinary_weights,
    patchers,
    vae_scale_factor,
)

TRAIN_TIMESTEPS = 1000
"""The trainer's integer timesteps 0..999 (``training.step``'s one draw) span the noise levels."""

FLUX_GUIDANCE = 1.0
"""The distilled guidance Flux dev is conditioned on while training (the diffusers backend's)."""


class ComfyFlowObjective:
    """The flow-matching objective (``backends.flow_matching``'s protocol) read off a MODEL's own
    ``model_sampling``: its noise levels (with its shift), noising, and the Euler step of
    ComfyUI's samplers.

    Timestep ``t`` (0..999, or the sampler's floats; -1 the clean end) is the fraction
    ``(t + 1) / 1000`` of the way from clean to pure noise, i.e. ``percent_to_sigma(1 - u)``."""

    prediction_type = "flow"

    def __init__(self, sampling):
        self.sampling = sampling

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        u = ((timesteps.double().cpu() + 1) / TRAIN_TIMESTEPS).clamp(0.0, 1.0)
        return torch.tensor([float(self.sampling.percent_to_sigma(1.0 - float(x))) for x in u])

    def _level(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.sigmas(timesteps).to(like.device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``noise_scaling``: the model's own noised latents at each row's level."""
        noisy = self.sampling.noise_scaling(self._level(timesteps, latents), noise.float(), latents.float())
        return noisy.to(latents.dtype)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The velocity of the model's noising path (pure noise minus clean end), which its
        ``calculate_denoised`` turns back into the clean latents at every level."""
        ones = torch.ones(latents.shape[0], device=latents.device)
        noisy = self.sampling.noise_scaling(ones, noise.float(), latents.float())
        clean = self.sampling.noise_scaling(ones * 0, noise.float(), latents.float())
        return noisy - clean

    def sampling_timesteps(self, steps: int) -> list[float]:
        if steps < 1:
            raise ValueError(f"sampling steps: {steps} must be at least 1")
        return [TRAIN_TIMESTEPS * (1 - i / steps) - 1 for i in range(steps)]

    def sample_step(self, velocity: torch.Tensor, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        """ComfyUI's Euler step: derivative ``(x - denoised) / sigma`` times the level change."""
        sigma, sigma_next = (float(s) for s in self.sigmas(torch.tensor([t, t_next])))
        denoised = self.sampling.calculate_denoised(torch.tensor([sigma], device=x.device), velocity, x)
        return x + (x - denoised) / sigma * (sigma_next - sigma)


class FusedRows:
    """One row third (K or V) of a fused q/k/v linear, as the core's ``KVDeltaInjector`` sees a
    projection: ``weight`` (a view of those rows) and ``register_forward_hook``, whose hook gets
    and returns just those output columns."""

    def __init__(self, fused: nn.Module, third: int):
        self.fused = fused
        self.width = int(fused.weight.shape[0]) // 3
        self.rows = slice(third * self.width, (third + 1) * self.width)

    @property
    def weight(self) -> torch.Tensor:
        return self.fused.weight[self.rows]

    def register_forward_hook(self, hook):
        rows = self.rows

        def on_qkv(module, inputs, output):
            changed = hook(self, inputs, output[..., rows])
            return torch.cat([output[..., : rows.start], changed, output[..., rows.stop :]], dim=-1)

        return self.fused.register_forward_hook(on_qkv)


class ComfyDiTDenoiser(ComfyDenoiserBackend):
    """``DenoiserBackend`` over a ComfyUI Flux / SD3 ModelPatcher and VAE (``JointBlockDenoiser``'s
    protocol: ``text_kv_projections``, ``objective``, ``size_multiple``, ``detach_start_token``).
    The preview samples ``working_model`` with ComfyUI's sampler while ``route_attention`` is open."""

    prediction_type = "flow"
    detach_start_token = False  # T5 has no start token; SD3's CLIP part keeps its own as diffusers does
    needs_pooled = True

    def __init__(self, model, vae, device: torch.device | None = None):
        self.working_model = model.clone()  # our block patches never reach the caller's MODEL
        self.parts = parts = model_parts(model)
        layout = dit_layout(parts)
        if layout is None:
            raise ValueError(f"model: {type(parts.base_model).__name__} is not a Flux.1 or SD3 / SD3.5 model")
        self.family, self.text_qkv, patch = layout
        self.unet = parts.unet
        self.vae = vae
        self.objective = ComfyFlowObjective(model_sampling(model))
        self.latent_channels = parts.latent_channels
        self.vae_scale_factor = vae_scale_factor(vae)
        self.size_multiple = self.vae_scale_factor * patch
        self.device = device if device is not None else parts.device
        self.dtype = parts.dtype

    def canonical_layer_name(self, module_name: str) -> str:
        """A text attention's name -> its block (``double_blocks.3.txt_attn`` -> ``double_blocks.3``)."""
        return ".".join(module_name.split(".")[:2])

    def text_kv_projections(self) -> dict[str, FusedRows]:
        return {
            f"{name}.{proj}": FusedRows(qkv, third)
            for name, qkv in self.text_qkv.items()
            for proj, third in (("to_k", 1), ("to_v", 2))
        }

    def predict(
        self, noisy_latents: Tensor, timesteps: Tensor, context: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        """The velocity for latents at the objective's ``timesteps`` (0..999 or the sampler's floats)."""
        if pooled is None:
            raise ValueError(f"model: {self.family} needs the pooled text embedding of its CLIP")
        sigma = self.objective.sigmas(timesteps).to(self.device)
        with cancel_as_core("a transformer call"):
            out = dit_forward(
                self.unet,
                self.family,
                noisy_latents.to(self.device, self.dtype),
                self.objective.sampling.timestep(sigma).float(),
                context.to(self.device, self.dtype),
                pooled.to(self.device, self.dtype),
                self.transformer_options(),
                FLUX_GUIDANCE,
            )
        return out.float()

    @contextmanager
    def route_attention(self, router: AttentionRouter) -> Iterator[AttentionRouter]:
        """While open, ``working_model`` is a clone whose selected blocks hand their maps to the router."""
        previous = self.working_model
        routed = previous.clone()
        existing = dit_block_replacements(routed)
        before = getattr(router, "before_call", None)  # e.g. the preview learns which rows are conditional
        for i, block in enumerate(self.canonical_layer_name(name) for name in self.text_qkv):
            if router.selects(block):
                key = ("double_block", i)

                def capture(q_image, k_text, block=block):
                    router.capture_text_map(block, q_image, k_text)

                routed.set_model_patch_replace(joint_attention_patch(capture, existing.get(key), before), "dit", *key)
        self.working_model = routed
        try:
            yield router
        finally:
            self.working_model = previous


def dit_fingerprint_and_weights(model) -> tuple[str, dict[str, torch.Tensor]]:
    """Fingerprint and text K/V weights of a Flux / SD3 MODEL's *base* weights (``get_key_patches``:
    base value plus patches), keyed as ``text_kv_projections``, so the diffusers backend hashes the same."""
    _, layers, _ = dit_layout(model_parts(model))
    key_patches = model.get_key_patches(COMFY_UNET_PREFIX)
    fused = {}
    for attention in layers:
        base = key_patches[f"{COMFY_UNET_PREFIX}{attention}.qkv.weight"][0]
        fused[f"{attention}.qkv.weight"] = base[0] if isinstance(base, tuple) else base
    weights = text_kv_from_fused(fused)  # the K and V thirds, as the stock files lay them out
    return base_model_fingerprint(weights), weights


@contextmanager
def dit_training_session(model, clip, vae) -> Iterator[ModelBundle]:
    """``comfy_backend.training_session`` for Flux / SD3: inference mode off, grads on, ComfyUI's
    training switch on; only the transformer and the CLIP encoders get ordinary weights (T5 runs
    without gradient: the token's T5 part lives in its output space)."""
    import comfy.model_management as mm

    with torch.inference_mode(False), torch.enable_grad(), comfy_training_mode():
        denoiser = ComfyDiTDenoiser(model, vae)
        mm.load_models_gpu(patchers(denoiser.working_model, clip), force_full_load=True)
        text = ComfyDiTText(clip, denoiser.family)
        with (
            ordinary_weights(denoiser.unet, *text.clip_encoders()),
            text.differentiable(),
            differentiable_dit_blocks(denoiser.unet),
        ):
            with bundle_of(text, denoiser, dit_fingerprint_and_weights(denoiser.working_model)[0]) as bundle:
                yield bundle
