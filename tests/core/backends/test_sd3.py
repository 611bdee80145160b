"""What is SD3's own in the diffusers backend (tiny, random, SD3.5-architecture, built in code):
the token in the CLIP-L / CLIP-G part and the T5 part of the context, both pooled vectors,
and a joint block's image-to-text map ([image, text], no rotary) against its definition.
Training, resume, adapters and sampling: tests/core/training/test_dit.py, for Flux and SD3 alike.
"""

from __future__ import annotations

import math

import pytest
import torch

WIDTH_L, WIDTH_G, WIDTH_T5 = 32, 48, 96


def test_token_positions_are_clip_and_t5_positions(tiny_sd3_bundle):
    text = tiny_sd3_bundle.text
    text.check_token("<doll1>")
    doll = text.initial_embedding("doll")
    assert doll.shape == (1, WIDTH_L + WIDTH_G + WIDTH_T5)
    encoded = text.encode(["photo of a <doll1> doll", "a red cat"], {"<doll1>": doll})
    # CLIP: SOT=0 "photo"=1 "of"=2 "a"=3 "<doll1>"=4; T5 (after the 77 CLIP positions): "<doll1>"=3
    assert encoded.token_positions == [{"<doll1>": [4, 77 + 3]}, {}]
    assert encoded.context.shape == (2, 77 + 16, WIDTH_T5) and encoded.pooled.shape == (2, WIDTH_L + WIDTH_G)
    assert torch.equal(encoded.context[:, :77, WIDTH_L + WIDTH_G :], torch.zeros(2, 77, WIDTH_T5 - WIDTH_L - WIDTH_G))
    torch.testing.assert_close(encoded.context[0, 77 + 3], doll[0, WIDTH_L + WIDTH_G :])


def test_the_pooled_vector_is_both_clip_models_and_the_token_reaches_it(tiny_sd3_bundle):
    text = tiny_sd3_bundle.text
    text.check_token("<doll1>")
    start = text.initial_embedding("doll")
    moved = start.clone()
    moved[0, :WIDTH_L] += 1.0  # only the CLIP-L slice
    a = text.encode(["a <doll1>"], {"<doll1>": start}).pooled
    b = text.encode(["a <doll1>"], {"<doll1>": moved}).pooled
    assert not torch.equal(a[:, :WIDTH_L], b[:, :WIDTH_L]) and torch.equal(a[:, WIDTH_L:], b[:, WIDTH_L:])


def _direct_map(attn, hidden, context, slots):
    """The block's image-to-text map by the definition: softmax over the text keys of the
    normed image-query x text-key logits, mean over heads."""
    heads = attn.heads
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (heads, -1)))
    k = attn.norm_added_k(attn.add_k_proj(context).unflatten(-1, (heads, -1)))
    probs = torch.einsum("bnhd,bthd->bhnt", q, k).div(math.sqrt(q.shape[-1])).softmax(-1).mean(1)
    return torch.gather(probs, 2, slots.unsqueeze(1).expand(-1, probs.shape[1], -1))


@pytest.mark.parametrize(
    "block", ["joint_blocks.0", "joint_blocks.2"]
)  # SD3.5's dual-attention block; the last, context_pre_only
def test_a_captured_map_is_the_direct_softmax_over_the_text_keys(tiny_sd3_bundle, routed_block, block):
    slots = torch.tensor([[4, 80], [0, 1]])
    found = routed_block(tiny_sd3_bundle, block, slots, latent_side=16)
    (captured,) = found["captured"]
    assert captured.probs.shape == (2, 64, 2)  # 8 x 8 image tokens
    torch.testing.assert_close(found["routed"], found["plain"])
    inputs = found["inputs"]
    with torch.no_grad():
        expected = _direct_map(
            tiny_sd3_bundle.denoiser.blocks()[block], inputs["hidden_states"], inputs["encoder_hidden_states"], slots
        )
    torch.testing.assert_close(captured.probs, expected)
