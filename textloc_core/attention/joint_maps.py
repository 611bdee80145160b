"""The image-to-text map of a joint-attention block (diffusion transformers), in bounded memory.

In a UNet, text enters through cross-attention and the softmax over the text keys *is* the
token map. A diffusion transformer (Flux, SD3) runs one attention over the concatenated
[text, image] sequence; its analogue of the token map is the image-query x text-key block of
the logits, renormalised over the text keys only (docs/dit.md, "The image-to-text map"):

    map[b, i, t] = mean over heads h of softmax_t(q[b, h, i] . k[b, h, t] / sqrt(d))

Only the tracked slots' columns are kept, but the softmax needs every text column. The heads
are processed ``HEADS_PER_CHUNK`` at a time under activation checkpointing, so the extra
memory is one chunk's (B, chunk, N, T) probabilities, recomputed in backward, whatever the
number of heads. The block's own output still comes from its fused kernel.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

HEADS_PER_CHUNK = 4
"""Heads whose probabilities exist at one time (forward, and again in backward)."""


def _chunk_sum(q: torch.Tensor, k: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Sum over this chunk's heads of the text-renormalised probabilities at ``slots``."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    summed = scores.float().softmax(dim=-1).sum(dim=1)  # (B, N, T)
    return torch.gather(summed, 2, slots.unsqueeze(1).expand(-1, summed.shape[1], -1))


def image_text_map(
    q_image: torch.Tensor, k_text: torch.Tensor, slots: torch.Tensor, heads_per_chunk: int = HEADS_PER_CHUNK
) -> torch.Tensor:
    """(B, N, S) float32 map of N image queries over the S text positions ``slots`` (B, S),
    averaged over heads; ``q_image`` (B, H, N, d), ``k_text`` (B, H, T, d)."""
    heads = q_image.shape[1]
    slots = slots.to(q_image.device)
    total = None
    for start in range(0, heads, max(1, heads_per_chunk)):
        q, k = q_image[:, start : start + heads_per_chunk], k_text[:, start : start + heads_per_chunk]
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            part = checkpoint(_chunk_sum, q, k, slots, use_reentrant=False)
        else:
            part = _chunk_sum(q, k, slots)
        total = part if total is None else total + part
    return total / heads
