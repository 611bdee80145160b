"""What is Flux's own in the diffusers backend (tiny, random, built in code): the identifier
token as T5 output-space vectors plus a CLIP-L slice for the pooled vector, and the
double-stream blocks' image-to-text maps (rotary, [text, image]) against their definition.
Training, resume, adapters and sampling: tests/core/training/test_dit.py, for Flux and SD3 alike.
"""

from __future__ import annotations

import math

import pytest
import torch

T5_WIDTH, CLIP_WIDTH = 32, 32


def test_token_positions_are_the_t5_positions_and_known_words_are_refused(tiny_flux_bundle):
    text = tiny_flux_bundle.text
    for token in ("<doll1>", "<bucket1>"):
        text.check_token(token)
    doll = text.initial_embedding("doll")
    assert doll.shape == (1, T5_WIDTH + CLIP_WIDTH)
    two = torch.cat([doll, doll])
    encoded = text.encode(
        ["photo of a <doll1> doll and a <bucket1> bucket", "a <doll1> <doll1>", "a red cat"],
        {"<doll1>": doll, "<bucket1>": two},
    )
    # T5 has no start token: "photo"=0 "of"=1 "a"=2 "<doll1>"=3 ...; a two-vector token takes two positions
    assert encoded.token_positions == [{"<doll1>": [3], "<bucket1>": [7, 8]}, {"<doll1>": [1, 2]}, {}]
    assert encoded.context.shape == (3, 16, T5_WIDTH) and encoded.pooled.shape == (3, CLIP_WIDTH)
    torch.testing.assert_close(encoded.context[0, 3], doll[0, :T5_WIDTH])
    with pytest.raises(ValueError, match="already a word of the T5 vocabulary"):
        text.t5.check_token("doll")
    with pytest.raises(ValueError, match="T5 tokens long"):
        text.encode(["a " * 20], {})


def test_the_init_words_t5_vector_starts_where_the_word_itself_sits(tiny_flux_bundle):
    text = tiny_flux_bundle.text
    text.check_token("<doll1>")
    start = text.initial_embedding("doll")
    plain = text.encode(["doll"], {}).context[0, 0]
    torch.testing.assert_close(start[0, :T5_WIDTH], plain)
    clip_row = text.clip.embedding.weight[text.clip.pieces("doll")[0]]
    torch.testing.assert_close(start[0, T5_WIDTH:], clip_row)


def _direct_map(attn, hidden, context, rotary, slots):
    """The block's image-to-text map by the definition: softmax over the text keys of the
    image-query x text-key logits (normed, rotated), mean over heads."""
    from diffusers.models.embeddings import apply_rotary_emb

    d = attn.head_dim
    q = attn.norm_q(attn.to_q(hidden).unflatten(-1, (-1, d)))
    k_text = attn.norm_added_k(attn.add_k_proj(context).unflatten(-1, (-1, d)))
    k_image = attn.norm_k(attn.to_k(hidden).unflatten(-1, (-1, d)))
    q_text = torch.zeros_like(k_text)
    n_text = context.shape[1]
    q = apply_rotary_emb(torch.cat([q_text, q], 1), rotary, sequence_dim=1)[:, n_text:]
    k = apply_rotary_emb(torch.cat([k_text, k_image], 1), rotary, sequence_dim=1)[:, :n_text]
    probs = torch.einsum("bnhd,bthd->bhnt", q, k).div(math.sqrt(d)).softmax(-1).mean(1)
    return torch.gather(probs, 2, slots.unsqueeze(1).expand(-1, probs.shape[1], -1))


def test_a_captured_map_is_the_direct_softmax_over_the_text_keys(tiny_flux_bundle, routed_block):
    slots = torch.tensor([[3, 4], [0, 1]])
    found = routed_block(tiny_flux_bundle, "double_blocks.1", slots)
    (captured,) = found["captured"]
    assert captured.layer == "double_blocks.1" and captured.probs.shape == (2, 16, 2)  # 4 x 4 image tokens
    inputs = found["inputs"]
    with torch.no_grad():
        expected = _direct_map(
            tiny_flux_bundle.denoiser.blocks()["double_blocks.1"],
            inputs["hidden_states"],
            inputs["encoder_hidden_states"],
            inputs["image_rotary_emb"],
            slots,
        )
    torch.testing.assert_close(captured.probs, expected)
