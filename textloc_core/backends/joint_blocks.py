"""What every diffusion transformer with joint text-image attention blocks shares in the
diffusers backend (Flux's double-stream blocks, SD3's joint blocks).

Each block ``transformer_blocks.i`` has one ``attn`` whose text stream carries its own K/V
(``add_k_proj`` / ``add_v_proj``): those are the trained W_K / W_V, keyed by ComfyUI's block
names (``<block prefix>.i.<text attention>.to_k`` / ``.to_v``). Routing sets a capturing
processor (``map_processor``) on the selected blocks only; every other block keeps diffusers'
own processor and fused kernel. The objective is rectified flow (``flow_matching``); T5
sequences have no start token, so no K/V position is detached.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from ..attention.cross_attention import AttentionRouter
from .base import ModelBundle, TextBackend
from .diffusers_backend import DiffusersDenoiser, kv_fingerprint
from .flow_matching import FlowMatching

_DIFFUSERS_BLOCK = re.compile(r"^transformer_blocks\.(\d+)$")


class JointBlockDenoiser(DiffusersDenoiser):
    """``DenoiserBackend`` over a diffusers transformer with joint-attention blocks + VAE.

    ``unet`` is the transformer (the protocol's name for the denoising network). Subclasses set
    ``block_prefix`` and ``text_attention`` (ComfyUI's names) and ``map_processor``, and give
    ``predict``: the velocity for latents at the objective's ``timesteps`` (0..999 or the
    sampler's floats). ``patch`` is the transformer's patch side in latent cells."""

    detach_start_token = False
    prediction_type = "flow"
    block_prefix = ""
    text_attention = ""

    def __init__(
        self, transformer: nn.Module, vae: nn.Module, objective: FlowMatching, latent_channels: int, patch: int
    ):
        self.unet = transformer
        self.vae = vae
        self.objective = objective
        self.latent_channels = int(latent_channels)
        self.needs_pooled = True
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size_multiple = self.vae_scale_factor * patch
        self._scale = float(vae.config.scaling_factor)
        self._shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def blocks(self) -> dict[str, nn.Module]:
        """The joint blocks' attention modules by canonical block name, in forward order."""
        return {f"{self.block_prefix}.{i}": block.attn for i, block in enumerate(self.unet.transformer_blocks)}

    def text_kv_projections(self) -> dict[str, nn.Module]:
        return {
            f"{name}.{self.text_attention}.{proj}": getattr(attn, source)
            for name, attn in self.blocks().items()
            for proj, source in (("to_k", "add_k_proj"), ("to_v", "add_v_proj"))
        }

    def canonical_layer_name(self, module_name: str) -> str:
        match = _DIFFUSERS_BLOCK.match(module_name)
        if match is None:
            raise ValueError(f"{module_name!r} is not a joint-attention block (transformer_blocks.<i>)")
        return f"{self.block_prefix}.{match.group(1)}"

    map_processor: Callable[[AttentionRouter, str], object]
    """The processor class computing a block's attention as diffusers does, plus its map;
    called with the router and the block's canonical name."""

    @contextmanager
    def route_attention(self, router: AttentionRouter) -> Iterator[AttentionRouter]:
        previous = []
        try:
            for name, attn in self.blocks().items():
                if router.selects(name):
                    previous.append((attn, attn.processor))
                    attn.set_processor(self.map_processor(router, name))
            yield router
        finally:
            for attn, processor in previous:
                attn.set_processor(processor)


def joint_bundle(denoiser: JointBlockDenoiser, text: TextBackend, encoders: Iterable[nn.Module]) -> ModelBundle:
    """The ``ModelBundle`` of a joint-block transformer and its text backend. The transformer,
    the VAE and the text ``encoders`` are put in eval mode; training never modifies their weights."""
    for model in (denoiser.unet, denoiser.vae, *encoders):
        model.eval()
    weight = next(denoiser.unet.parameters())
    return ModelBundle(
        text=text,
        denoiser=denoiser,
        fingerprint=kv_fingerprint(denoiser),
        device=weight.device,
        compute_dtype=weight.dtype,
    )
