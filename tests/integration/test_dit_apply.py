"""TextLoc Apply Adapter restores a whole Flux / SD3.5 adapter on ComfyUI's own MODEL + CLIP
(tiny models of ``tiny_dit_comfy``): the K/V deltas on the fused text ``qkv``, the token's CLIP
slices as input embeddings, and its T5 slice, a vector in T5's output space, written into the
context row at the token's T5 position while every other row is what T5 gives with its pad id
there (as both backends train it). The original CLIP is left as it was; adapters stack.
"""

from __future__ import annotations

import pytest
import tiny_dit_comfy as tiny
import torch

PROMPT = "a photo of a {} doll"
WIDTHS = {"flux": (tiny.FLUX_T5, tiny.WIDTH_L), "sd3": (tiny.SD3_T5, tiny.WIDTH_L + tiny.WIDTH_G)}
"""(T5 width, CLIP widths together) of a token's vector."""


def _adapter(model, family: str, token: str, seed: int):
    from textloc_core.adapters import adapter as ad
    from textloc_core.adapters.formats import text_kv_from_fused
    from textloc_core.backends.fingerprint import base_model_fingerprint

    base = text_kv_from_fused(model.model.diffusion_model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    meta = ad.AdapterMetadata(
        base_fingerprint=base_model_fingerprint(base),
        architecture=ad.architecture_signature(base),
        concepts=[{"name": token.strip("<>"), "token": token, "class_word": "doll", "init_word": None}],
        guidance="hard",
    )
    deltas = {key: 0.05 * torch.randn(w.shape, generator=gen) for key, w in base.items()}
    return ad.Adapter(deltas, {token: torch.randn(1, sum(WIDTHS[family]), generator=gen)}, meta)


def _t5_part(family: str, vector: torch.Tensor) -> torch.Tensor:
    t5, _ = WIDTHS[family]
    return vector[0, :t5] if family == "flux" else vector[0, -t5:]


def _encode(clip, text: str):
    tokens = clip.tokenize(text)
    with torch.inference_mode():
        context, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return tokens, context.float(), pooled.float()


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_apply_restores_the_whole_token_t5_part_included(pack, family):
    from textloc_pack.nodes.apply_node import apply_adapter
    from textloc_pack.nodes.comfy_dit_apply import t5_rows

    with torch.inference_mode():
        model, clip = tiny.build_model(family, seed=1), tiny.build_clip(family, seed=1)
    doll = _adapter(model, family, "<doll1>", seed=3)
    new_model, new_clip = apply_adapter(model, clip, doll, 1.0)
    assert len(new_model.patches) == len(doll.kv_deltas) // 2  # one fused qkv patch per block

    tokens, context, pooled = _encode(new_clip, PROMPT.format("<doll1>"))
    ((position, _),) = t5_rows(tokens)
    # the reference: the original CLIP with T5's pad token written at the identifier's place
    plain_tokens, plain, plain_pooled = _encode(clip, PROMPT.format("<pad>"))
    n_t5 = sum(len(chunk) for chunk in tokens["t5xxl"])
    assert n_t5 == sum(len(chunk) for chunk in plain_tokens["t5xxl"]) and context.shape == plain.shape
    start = context.shape[1] - n_t5
    want = plain.clone()
    want[0, start + position] = _t5_part(family, doll.token_embeddings["<doll1>"]).to(want.dtype)
    torch.testing.assert_close(context[:, start:], want[:, start:], rtol=1e-5, atol=1e-5)
    assert not torch.equal(pooled, plain_pooled)  # the CLIP-L slice reaches the pooled vector

    # the original CLIP is untouched, and a second adapter stacks its token on top
    _, again, _ = _encode(clip, PROMPT.format("<pad>"))
    assert torch.equal(again, plain)
    bucket = _adapter(model, family, "<bucket1>", seed=4)
    _, stacked = apply_adapter(new_model, new_clip, bucket, 1.0)
    both, _, _ = _encode(stacked, "a <doll1> doll and a <bucket1> bucket")
    vectors = [v for _, v in t5_rows(both)]
    assert len(vectors) == 2
    assert torch.equal(vectors[0], _t5_part(family, doll.token_embeddings["<doll1>"]))
    assert torch.equal(vectors[1], _t5_part(family, bucket.token_embeddings["<bucket1>"]))


def test_a_token_of_another_width_is_named(pack):
    from textloc_pack.nodes.apply_node import apply_adapter

    with torch.inference_mode():
        model, clip = tiny.build_model("flux", seed=1), tiny.build_clip("flux", seed=1)
    adapter = _adapter(model, "flux", "<doll1>", seed=3)
    adapter.token_embeddings["<doll1>"] = torch.randn(1, tiny.WIDTH_L + 7)
    _, new_clip = apply_adapter(model, clip, adapter, 1.0)
    with pytest.raises(ValueError, match="T5 part is 7 values wide, this text encoder's T5 gives 32"):
        _encode(new_clip, PROMPT.format("<doll1>"))
