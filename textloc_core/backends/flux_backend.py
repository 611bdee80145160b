"""Flux.1 in the diffusers backend: ``FluxTransformer2DModel`` + VAE + T5 / CLIP-L text.

What Textual Localization trains on Flux (docs/dit.md):

* W_K / W_V: the text stream's K and V of the double-stream blocks (diffusers
  ``transformer_blocks.i.attn.add_k_proj`` / ``add_v_proj``, ComfyUI's K and V thirds of
  ``double_blocks.i.txt_attn.qkv``). Adapters key them by ComfyUI's block names,
  ``double_blocks.i.txt_attn.to_k`` / ``.to_v``. The single-stream blocks share Q/K/V between
  text and image rows, so they are not trained.
* The token map of a block: its image-query x text-key logits renormalised over the text
  keys (``attention.joint_maps``), captured by ``MappedFluxProcessor`` on the routed blocks
  only (``joint_blocks``).
* The objective: rectified flow with ComfyUI's Flux time shift (``flow_matching``).

Latents stay (B, C, h, w) for the trainer; ``predict`` packs them into Flux's 2 x 2 patches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.cross_attention import AttentionRouter
from .base import ModelBundle
from .flow_matching import FLUX_SHIFT, FlowMatching
from .joint_blocks import JointBlockDenoiser, joint_bundle
from .t5_text import FluxText

PATCH = 2
"""Flux packs 2 x 2 latent cells into one image token."""


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C) image tokens, row-major, as FluxPipeline packs them."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``pack`` for latents of size ``hw``."""
    h, w = hw
    b, _, packed = tokens.shape
    c = packed // (PATCH * PATCH)
    x = tokens.view(b, h // PATCH, w // PATCH, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(h/2 * w/2, 3) rotary position ids (0, row, column) of the image tokens."""
    rows, cols = hw[0] // PATCH, hw[1] // PATCH
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


class MappedFluxProcessor:
    """Flux's joint attention for one routed double-stream block: the same projections,
    norms, rotary embedding and fused SDPA as ``FluxAttnProcessor``, plus the block's
    image-to-text map handed to the router."""

    def __init__(self, router: AttentionRouter, layer: str):
        self.router = router
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise ValueError(f"{self.layer}: attention masks are not supported while capturing token maps")
        d = attn.head_dim
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, d)))
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, d)))
        v = attn.to_v(hidden_states).unflatten(-1, (-1, d))
        # module calls, so the K/V deltas' forward hooks on add_k_proj / add_v_proj apply
        tq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
        tk = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
        tv = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, d))
        query, key, value = torch.cat([tq, q], 1), torch.cat([tk, k], 1), torch.cat([tv, v], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        n_text = encoder_hidden_states.shape[1]
        self.router.capture_text_map(self.layer, query[:, n_text:].transpose(1, 2), key[:, :n_text].transpose(1, 2))
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        text_out, image_out = out[:, :n_text], out[:, n_text:]
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())


class FluxDenoiser(JointBlockDenoiser):
    """Flux's transformer + VAE. ``guidance`` is the distilled guidance value Flux dev is
    conditioned on (unused by a model without guidance embedding, like schnell)."""

    block_prefix = "double_blocks"
    map_processor = MappedFluxProcessor
    text_attention = "txt_attn"

    def __init__(self, transformer: nn.Module, vae: nn.Module, guidance: float = 1.0):
        super().__init__(
            transformer, vae, FlowMatching(FLUX_SHIFT), int(transformer.config.in_channels) // (PATCH * PATCH), PATCH
        )
        self.guidance = float(guidance)

    def predict(
        self, noisy_latents: Tensor, timesteps: Tensor, context: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        if pooled is None:
            raise ValueError("Flux needs the pooled CLIP-L embedding; encode prompts with its text backend")
        hw = tuple(noisy_latents.shape[-2:])
        device, dtype = noisy_latents.device, noisy_latents.dtype
        guidance = None
        if getattr(self.unet.config, "guidance_embeds", False):
            guidance = torch.full((noisy_latents.shape[0],), self.guidance, device=device, dtype=torch.float32)
        out = self.unet(
            hidden_states=pack(noisy_latents),
            encoder_hidden_states=context,
            pooled_projections=pooled.to(dtype),
            timestep=self.objective.sigmas(timesteps).to(device, dtype),
            img_ids=image_ids(hw, device),
            txt_ids=torch.zeros(context.shape[1], 3, device=device),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack(out, hw)


def bundle_from_flux(
    *,
    transformer: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    text_encoder_2: nn.Module,
    tokenizer_2: Any,
    max_sequence_length: int = 512,
    guidance: float = 1.0,
) -> ModelBundle:
    """A ``ModelBundle`` from FluxPipeline's components (its names: ``text_encoder`` /
    ``tokenizer`` are CLIP-L, ``text_encoder_2`` / ``tokenizer_2`` T5), in eval mode."""
    return joint_bundle(
        FluxDenoiser(transformer, vae, guidance),
        FluxText(tokenizer_2, text_encoder_2, tokenizer, text_encoder, max_sequence_length),
        (text_encoder, text_encoder_2),
    )
