"""SD3 / SD3.5 (MMDiT) in the diffusers backend: ``SD3Transformer2DModel`` + VAE + CLIP-L,
CLIP-G and T5 text (``t5_text.SD3Text``).

Trained W_K / W_V: the text stream's K and V of every joint block (diffusers
``transformer_blocks.i.attn.add_k_proj`` / ``add_v_proj``; ComfyUI's K and V thirds of
``joint_blocks.i.context_block.attn.qkv``), keyed ``joint_blocks.i.context_block.attn.to_k``
/ ``.to_v``. The last block is ``context_pre_only`` (its text output is unused) but its text
K/V still feed the image stream, so it trains too. SD3.5's second, image-only attention
(``attn2`` of the dual-attention blocks) is neither trained nor routed. The objective is
rectified flow with ComfyUI's SD3 shift (3.0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.cross_attention import AttentionRouter
from .base import ModelBundle
from .flow_matching import SD3_SHIFT, FlowMatching
from .joint_blocks import JointBlockDenoiser, joint_bundle
from .t5_text import SD3Text


class MappedJointProcessor:
    """SD3's joint attention for one routed block: the same projections, norms and fused SDPA
    as diffusers' ``JointAttnProcessor2_0`` over ``[image, text]``, plus the block's
    image-to-text map handed to the router."""

    def __init__(self, router: AttentionRouter, layer: str):
        self.router = router
        self.layer = layer

    @staticmethod
    def _heads(x: torch.Tensor, heads: int, norm) -> torch.Tensor:
        """(B, L, H*d) -> (B, H, L, d), normed per head when the model has the norm."""
        x = x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)
        return x if norm is None else norm(x)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None or encoder_hidden_states is None:
            raise ValueError(f"{self.layer}: capturing token maps needs the text stream and no attention mask")
        heads, n_image = attn.heads, hidden_states.shape[1]
        q = self._heads(attn.to_q(hidden_states), heads, attn.norm_q)
        k = self._heads(attn.to_k(hidden_states), heads, attn.norm_k)
        v = self._heads(attn.to_v(hidden_states), heads, None)
        # module calls, so the K/V deltas' forward hooks on add_k_proj / add_v_proj apply
        tq = self._heads(attn.add_q_proj(encoder_hidden_states), heads, attn.norm_added_q)
        tk = self._heads(attn.add_k_proj(encoder_hidden_states), heads, attn.norm_added_k)
        tv = self._heads(attn.add_v_proj(encoder_hidden_states), heads, None)
        self.router.capture_text_map(self.layer, q, tk)
        out = F.scaled_dot_product_attention(torch.cat([q, tq], 2), torch.cat([k, tk], 2), torch.cat([v, tv], 2))
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        image_out, text_out = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return attn.to_out[1](attn.to_out[0](image_out)), text_out


class SD3Denoiser(JointBlockDenoiser):
    """SD3 / SD3.5's transformer + VAE; latents go in as (B, C, h, w), the transformer patches them."""

    block_prefix = "joint_blocks"
    map_processor = MappedJointProcessor
    text_attention = "context_block.attn"

    def __init__(self, transformer: nn.Module, vae: nn.Module):
        config = transformer.config
        super().__init__(transformer, vae, FlowMatching(SD3_SHIFT), int(config.in_channels), int(config.patch_size))

    def predict(
        self, noisy_latents: Tensor, timesteps: Tensor, context: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        if pooled is None:
            raise ValueError("SD3 needs the pooled CLIP-L + CLIP-G embedding; encode prompts with its text backend")
        dtype = noisy_latents.dtype
        # the SD3 pipeline passes the noise level x 1000 as the timestep
        sigma = self.objective.sigmas(timesteps).to(noisy_latents.device, dtype) * 1000
        return self.unet(
            hidden_states=noisy_latents,
            encoder_hidden_states=context,
            pooled_projections=pooled.to(dtype),
            timestep=sigma,
            return_dict=False,
        )[0]


def bundle_from_sd3(
    *,
    transformer: nn.Module,
    vae: nn.Module,
    max_sequence_length: int = 256,
    weight_dtype: str = "default",
    **text_components: Any,
) -> ModelBundle:
    """A ``ModelBundle`` from StableDiffusion3Pipeline's components (keyword arguments by its
    names), in eval mode. ``text_components`` are its three tokenizers and text encoders
    (``tokenizer`` / ``text_encoder`` CLIP-L, ``_2`` CLIP-G, ``_3`` T5), as ``SD3Text`` takes them.
    ``weight_dtype`` "fp8_e4m3fn" stores the transformer's linear weights in float8 (``fp8_base``)."""
    text = SD3Text(**text_components, max_length=max_sequence_length)
    return joint_bundle(
        SD3Denoiser(transformer, vae), text, (text.clip_l_encoder, text.clip_g_encoder, text.t5_encoder), weight_dtype
    )
